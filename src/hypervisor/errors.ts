// What a hypervisor driver raises: short message, the command's own words in the cause.
import { ExitCode, WanmigError } from "../errors.ts";

export class HypervisorError extends WanmigError {
  constructor(message: string, opts: { cause?: unknown; hint?: string } = {}) {
    super(message, { exitCode: ExitCode.peerFailure, ...opts });
  }
}
