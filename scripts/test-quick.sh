#!/usr/bin/env bash
# npm run test:quick: the inner loop, at most about 3 minutes here. The unit tests (no
# process started), one live migration under a full-speed random 4 KiB writer, and one real
# QEMU guest moved live. `npm test` is the whole suite, and CI runs that.
set -euo pipefail
cd "$(dirname "$0")/.."
unit=(
  buffer-pool channel-frames compress compression-policy convergence copy-pass delta-log disk-tally
  disruption drain-meter extents image-set link-failure link-meter log-bound memory-convergence
  payload protocol stream-level timeline write-behind write-tracking zstd-stream
)
files=()
for u in "${unit[@]}"; do files+=("./test/$u.test.ts"); done
bun test --timeout 60000 "${files[@]}"
bun test --timeout 120000 test/multi-disk.test.ts -t "a full-speed writer on each disk"
bun test --timeout 300000 test/vm.test.ts -t "the guest carries on at the destination"
