import { ExitCode, type ExitCodeValue, WanmigError } from "../errors.ts";

/** A peer sent something the protocol does not allow: malformed frame, wrong order, bad version. */
export class ProtocolError extends WanmigError {
  constructor(message: string, opts: { cause?: unknown; exitCode?: ExitCodeValue } = {}) {
    super(message, { exitCode: opts.exitCode ?? ExitCode.badInput, cause: opts.cause });
  }
}
