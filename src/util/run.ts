// The one way we start external programs (ssh now; xl, ip, nsupdate later): argv is
// logged, the binary can be overridden (tests, odd installs), failures carry argv,
// exit code and stderr.

import { ExitCode, WanmigError } from "../errors.ts";
import type { Logger } from "../log.ts";

export class CommandError extends WanmigError {
  constructor(
    readonly argv: string[],
    readonly code: number | null,
    readonly stderr: string,
  ) {
    super(`${argv[0]} exited ${code}: ${stderr.trim().split("\n").at(-1) ?? ""}`, { exitCode: ExitCode.peerFailure });
  }
}

export function quoteArgv(argv: string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(" ");
}

/** Runs to completion and returns stdout; throws CommandError on a non-zero exit. */
export async function run(argv: string[], log: Logger, opts: { input?: string } = {}): Promise<string> {
  const t0 = performance.now();
  log.debug(`run: ${quoteArgv(argv)}`);
  const p = Bun.spawn(argv, { stdin: opts.input !== undefined ? new Blob([opts.input]) : "ignore", stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  log.debug(`run: ${argv[0]} exited ${code} after ${Math.round(performance.now() - t0)} ms`);
  if (code !== 0) throw new CommandError(argv, code, err);
  return out;
}

/** Starts a long-lived child with piped stdin/stdout (stderr passes through to ours). */
export function spawnPiped(argv: string[], log: Logger) {
  log.info(`starting: ${quoteArgv(argv)}`);
  return Bun.spawn(argv, { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
}
