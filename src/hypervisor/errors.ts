// What a hypervisor driver raises: short message, the command's own words in the cause.
import { ExitCode, WanmigError } from "../errors.ts";

export class HypervisorError extends WanmigError {
  /** The hypervisor says the VM may be running at both ends, or neither: never resume it here. */
  readonly unsafe: boolean;
  constructor(message: string, opts: { cause?: unknown; hint?: string; unsafe?: boolean } = {}) {
    super(message, { exitCode: ExitCode.peerFailure, cause: opts.cause, hint: opts.hint });
    this.unsafe = opts.unsafe ?? false;
  }
}
