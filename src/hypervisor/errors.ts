// What a hypervisor driver raises: short message, the command's own words in the cause.
import { ExitCode, WanmigError } from "../errors.ts";

export class HypervisorError extends WanmigError {
  /** The hypervisor says the VM may be running at both ends, or neither: never resume it here. */
  readonly unsafe: boolean;
  /**
   * The memory migration failed and the VM does not run at the source (shut down, paused,
   * crashed), or its state there could not be read. It is still here, and its disk is served
   * here; the destination never runs a copy (the hand-off did not start). Not an abort that
   * leaves the VM running: an operator must start or resume it (exit 6).
   */
  readonly stranded: boolean;
  constructor(message: string, opts: { cause?: unknown; hint?: string; unsafe?: boolean; stranded?: boolean } = {}) {
    super(message, { exitCode: ExitCode.peerFailure, cause: opts.cause, hint: opts.hint });
    this.unsafe = opts.unsafe ?? false;
    this.stranded = opts.stranded ?? false;
  }
}
