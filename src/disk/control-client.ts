// Client of a local `serve`'s control socket (used by `status`, `source`, tests).

import { ofetch, FetchError } from "ofetch";
import { ControlError } from "../errors.ts";
import type { ServeStatus } from "./disk-service.ts";
import type { RecordingState } from "./recording.ts";
import type { ThrottleParams, ThrottleState } from "./throttle-policy.ts";

export class ControlClient {
  constructor(readonly socketPath: string) {}

  status(): Promise<ServeStatus> {
    return this.call("GET", "/v1/status");
  }

  /** `owner`: the pid of the source process the recording is for (a second one is refused while it lives). */
  startRecording(dir?: string, owner?: number): Promise<RecordingState> {
    return this.call("POST", "/v1/record", { action: "start", dir, owner });
  }

  stopRecording(): Promise<RecordingState> {
    return this.call("POST", "/v1/record", { action: "stop" });
  }

  /** Every delta up to `seq` is shipped (or skipped): the throttle's queue shrinks. */
  shipped(seq: bigint): Promise<ThrottleState> {
    return this.call("POST", "/v1/record", { action: "shipped", seq: seq.toString() });
  }

  throttle(params: Partial<ThrottleParams>): Promise<ThrottleState> {
    return this.call("POST", "/v1/throttle", params);
  }

  fence(fenced = true): Promise<ServeStatus["fence"]> {
    return this.call("POST", "/v1/fence", { fenced });
  }

  private async call<T>(method: "GET" | "POST", path: string, body?: object): Promise<T> {
    try {
      // Bun's fetch takes `unix`; ofetch passes unknown options through to it.
      return await ofetch<T>(`http://localhost${path}`, { method, body, unix: this.socketPath, retry: 0 } as never);
    } catch (cause) {
      if (cause instanceof FetchError && cause.data && typeof cause.data === "object" && "error" in cause.data)
        throw new ControlError(`${method} ${path}: ${(cause.data as { error: string }).error}`, { exitCode: 3 });
      throw new ControlError(`cannot reach the control socket ${this.socketPath}`, {
        cause,
        hint: "is `wanmig serve` running with this --name and --run-dir?",
      });
    }
  }
}
