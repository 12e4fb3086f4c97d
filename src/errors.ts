// Exit codes are a contract with shell runbooks: never renumber, only add.
// The same table is printed by `wanmig --help` and documented in README.md.
export const ExitCode = {
  ok: 0,
  internal: 1, // a bug: an error nobody classified
  usage: 2, // wrong or missing flags
  badInput: 3, // unusable image, malformed file or frame, wrong secret, a resource busy
  peerFailure: 4, // the peer, the link or an external tool failed
  abortedSafely: 5, // migration stopped before the point of no return: VM still runs at the source
  unsafeState: 6, // stopped after the point of no return, or the VM left running nowhere: an operator must look
  interrupted: 130, // SIGINT with nothing to clean up
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export const exitCodeTable: ReadonlyArray<[number, string]> = [
  [ExitCode.ok, "success"],
  [ExitCode.internal, "internal error (a bug; please report it)"],
  [ExitCode.usage, "usage error: wrong or missing flags"],
  [ExitCode.badInput, "bad input: unusable image, malformed data, wrong secret, name already in use"],
  [ExitCode.peerFailure, "peer failure: the other side, the link or an external tool failed"],
  [ExitCode.abortedSafely, "aborted safely: the VM still runs at the source, untouched"],
  [ExitCode.unsafeState, "unsafe state: failed after the point of no return, or the VM left not running at the source; read the message"],
  [ExitCode.interrupted, "interrupted by a signal"],
];

export function renderExitCodeTable(): string {
  return ["EXIT STATUS", ...exitCodeTable.map(([code, text]) => `  ${String(code).padEnd(4)}${text}`)].join("\n");
}

/**
 * The base of every error we raise on purpose. `message` is short and says what failed;
 * `hint` says what the operator can do; the cause chain carries the detail.
 */
export class WanmigError extends Error {
  readonly exitCode: ExitCodeValue;
  readonly hint?: string;
  constructor(message: string, opts: { exitCode?: ExitCodeValue; cause?: unknown; hint?: string } = {}) {
    super(message, { cause: opts.cause });
    this.name = new.target.name;
    this.exitCode = opts.exitCode ?? ExitCode.internal;
    this.hint = opts.hint;
  }
}

export class UsageError extends WanmigError {
  constructor(message: string, hint?: string) {
    super(message, { exitCode: ExitCode.usage, hint });
  }
}

/** `wanmig serve` (and later `dest` as a server): image, sockets, control API. */
export class ServeError extends WanmigError {
  constructor(message: string, opts: { cause?: unknown; hint?: string; exitCode?: ExitCodeValue } = {}) {
    super(message, { exitCode: opts.exitCode ?? ExitCode.badInput, ...opts });
  }
}

/** Talking to a local `serve` over its control socket. */
export class ControlError extends WanmigError {
  constructor(message: string, opts: { cause?: unknown; hint?: string; exitCode?: ExitCodeValue } = {}) {
    super(message, { exitCode: opts.exitCode ?? ExitCode.peerFailure, ...opts });
  }
}

/** A delta log that cannot be read or written. */
export class DeltaLogError extends WanmigError {
  constructor(message: string, opts: { cause?: unknown; exitCode?: ExitCodeValue } = {}) {
    super(message, { exitCode: opts.exitCode ?? ExitCode.badInput, ...opts });
  }
}

/** One line per link of the cause chain: the outer message stays short, the detail follows. */
export function describeError(err: unknown): string {
  const lines: string[] = [];
  let cur: unknown = err;
  for (let depth = 0; cur !== undefined && cur !== null && depth < 8; depth++) {
    if (cur instanceof Error) {
      const code = (cur as NodeJS.ErrnoException).code;
      lines.push(depth === 0 ? cur.message : `  caused by: ${cur.message}${code && !cur.message.includes(code) ? ` (${code})` : ""}`);
      cur = cur.cause;
    } else {
      lines.push(depth === 0 ? String(cur) : `  caused by: ${String(cur)}`);
      break;
    }
  }
  const hint = err instanceof WanmigError ? err.hint : undefined;
  if (hint) lines.push(`  hint: ${hint}`);
  return lines.join("\n");
}

export function exitCodeOf(err: unknown): number {
  if (err instanceof WanmigError) return err.exitCode;
  if (err instanceof Error && err.name === "CLIError") return ExitCode.usage;
  return ExitCode.internal;
}
