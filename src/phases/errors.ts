// One error type per phase, each wrapping its cause; the outer message stays short.
// Before the point of no return a failure means "aborted safely" (the VM runs at the
// source, its disk unfenced); after it, "unsafe state" (an operator must look).
import { ExitCode, type ExitCodeValue, WanmigError } from "../errors.ts";

function codeFor(cause: unknown, pastPointOfNoReturn: boolean): ExitCodeValue {
  if (pastPointOfNoReturn) return ExitCode.unsafeState;
  // A wrong secret or a malformed peer is bad input; the VM is untouched all the same.
  if (cause instanceof WanmigError && cause.exitCode === ExitCode.badInput) return ExitCode.badInput;
  return ExitCode.abortedSafely;
}

export class PhaseError extends WanmigError {
  constructor(phase: string, message: string, opts: { cause?: unknown; pastPointOfNoReturn?: boolean; hint?: string; exitCode?: ExitCodeValue } = {}) {
    super(`${phase}: ${message}`, { cause: opts.cause, hint: opts.hint, exitCode: opts.exitCode ?? codeFor(opts.cause, opts.pastPointOfNoReturn ?? false) });
  }
}
export class InitError extends PhaseError {
  constructor(message: string, opts: { cause?: unknown; hint?: string; exitCode?: ExitCodeValue } = {}) {
    super("init", message, opts);
  }
}
export class BulkError extends PhaseError {
  constructor(message: string, opts: { cause?: unknown } = {}) {
    super("bulk", message, opts);
  }
}
export class DeltasError extends PhaseError {
  constructor(message: string, opts: { cause?: unknown; pastPointOfNoReturn?: boolean } = {}) {
    super("deltas", message, opts);
  }
}
export class HandoffError extends PhaseError {
  constructor(message: string, opts: { cause?: unknown; pastPointOfNoReturn?: boolean; hint?: string } = {}) {
    super("hand-off", message, opts);
  }
}
export class ReceiveError extends PhaseError {
  constructor(message: string, opts: { cause?: unknown } = {}) {
    super("receive", message, opts);
  }
}

/** Ctrl-C (or SIGTERM) before the point of no return: the migration stops, the VM stays at the source. */
export class Interrupted extends WanmigError {
  constructor() {
    super("interrupted before the point of no return; the VM runs at the source, its disk served and writable", { exitCode: ExitCode.interrupted });
  }
}
