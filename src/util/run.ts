// The one way we start external programs (ssh, cp; xl, ip, nsupdate with the next issues).
// Every argv is logged with how long it took; a failure keeps the exit code and stderr in
// the error, so the operator sees exactly which command failed and what it said.

import { ExitCode, WanmigError } from "../errors.ts";
import type { Logger } from "../log.ts";

export function quoteArgv(argv: string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(" ");
}

/** An external command exited non-zero, or could not be started. */
export class CommandError extends WanmigError {
  constructor(
    readonly argv: string[],
    readonly code: number | null,
    readonly stderr: string,
    opts: { cause?: unknown; hint?: string } = {},
  ) {
    const said = stderr.trim().split("\n").at(-1);
    super(`${quoteArgv(argv)} ${code === null ? "could not be run" : `exited ${code}`}${said ? `: ${said}` : ""}`, {
      exitCode: ExitCode.peerFailure,
      ...opts,
    });
  }
}

export interface CommandResult {
  stdout: string;
  stderr: string;
  durationMs: number;
}

const STOPPED_OUTPUT_GRACE_MS = 1000;

/**
 * Runs a command to completion; throws CommandError unless it exits 0. `signal`: aborting it
 * sends the command SIGTERM (as a timeout does); the call still waits for it to exit.
 */
export async function runCommand(argv: string[], log: Logger, opts: { timeoutMs?: number; input?: string | Uint8Array; signal?: AbortSignal } = {}): Promise<CommandResult> {
  const start = performance.now();
  let proc;
  try {
    proc = Bun.spawn(argv, { stdin: opts.input === undefined ? "ignore" : typeof opts.input === "string" ? new TextEncoder().encode(opts.input) : opts.input, stdout: "pipe", stderr: "pipe", timeout: opts.timeoutMs, env: process.env });
  } catch (cause) {
    throw new CommandError(argv, null, "", { cause });
  }
  const stop = () => proc.kill("SIGTERM");
  if (opts.signal?.aborted) stop();
  opts.signal?.addEventListener("abort", stop, { once: true });
  const output = Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  const code = await proc.exited;
  opts.signal?.removeEventListener("abort", stop);
  // A stopped command's children (xl's ssh transport, say) may hold its pipes open long after
  // it died: what it said by then is enough.
  const [stdout, stderr] = opts.signal?.aborted ? await Promise.race([output, Bun.sleep(STOPPED_OUTPUT_GRACE_MS).then(() => ["", ""])]) : await output;
  const durationMs = Math.round(performance.now() - start);
  log.debug(`ran (${durationMs} ms, exit ${code}): ${quoteArgv(argv)}`);
  if (code !== 0) throw new CommandError(argv, code, stderr);
  return { stdout, stderr, durationMs };
}

/** Starts a long-lived child with piped stdin/stdout (stderr passes through to ours). */
export function spawnPiped(argv: string[], log: Logger) {
  log.info(`starting: ${quoteArgv(argv)}`);
  return Bun.spawn(argv, { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
}

const FEED_CHUNK = 1 << 20;

/**
 * Runs a command fed `input` on stdin, with no limit on the whole but one on a stall: the
 * command is stopped when it takes no byte for `stallMs`. A copy over a slow link may take
 * an hour and be healthy; one that moves nothing for a minute is not.
 */
export async function runCommandFed(argv: string[], log: Logger, input: Uint8Array, opts: { stallMs: number }): Promise<CommandResult> {
  const start = performance.now();
  let proc;
  try {
    proc = Bun.spawn(argv, { stdin: "pipe", stdout: "pipe", stderr: "pipe", env: process.env });
  } catch (cause) {
    throw new CommandError(argv, null, "", { cause });
  }
  const output = Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  let lastProgress = performance.now();
  let stalled = false;
  const watchdog = setInterval(() => {
    if (performance.now() - lastProgress < opts.stallMs) return;
    stalled = true;
    proc.kill("SIGTERM");
  }, Math.min(1000, opts.stallMs));
  try {
    for (let off = 0; off < input.length && !stalled; off += FEED_CHUNK) {
      proc.stdin.write(input.subarray(off, off + FEED_CHUNK));
      await proc.stdin.flush();
      lastProgress = performance.now();
    }
    await proc.stdin.end();
  } catch {
    // The command died or closed its stdin: its exit code and stderr say why.
  }
  const code = await proc.exited;
  clearInterval(watchdog);
  const [stdout, stderr] = await output;
  const durationMs = Math.round(performance.now() - start);
  log.debug(`ran (${durationMs} ms, exit ${code}, ${input.length} bytes fed): ${quoteArgv(argv)}`);
  if (stalled) throw new CommandError(argv, code, `${stderr}\nnothing moved for ${Math.round(opts.stallMs / 1000)} s; stopped`);
  if (code !== 0) throw new CommandError(argv, code, stderr);
  return { stdout, stderr, durationMs };
}
