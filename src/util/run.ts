// The one way we start external programs (ssh now; xl, ip, nsupdate with the next
// issues, which add a run-to-completion form with argv, exit code and stderr in the
// error): argv is always logged.

import type { Logger } from "../log.ts";

export function quoteArgv(argv: string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(" ");
}

/** Starts a long-lived child with piped stdin/stdout (stderr passes through to ours). */
export function spawnPiped(argv: string[], log: Logger) {
  log.info(`starting: ${quoteArgv(argv)}`);
  return Bun.spawn(argv, { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
}
