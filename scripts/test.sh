#!/usr/bin/env bash
# The suite (npm test). A failed test's report is printed where it happened, in the middle
# of minutes of output; a CI log is often read from its tail. So on failure, each failed
# test's report (the last lines before its "(fail)" line) and any error between tests are
# printed again at the end.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
bun test --timeout 120000 "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" != 0 ]; then
  echo
  echo "==== failures, repeated from above ===="
  awk -v keep=40 '
    /^\((pass|skip|todo)\)/ { n = 0; next }
    /^\(fail\)/ { s = (n > keep ? n - keep : 0); for (i = s; i < n; i++) print ring[i % keep]; print; print "----"; n = 0; next }
    /Unhandled error|error between tests/ { print; print "----" }
    { ring[n % keep] = $0; n++ }
  ' "$log" | tail -c 30000
fi
exit "$rc"
