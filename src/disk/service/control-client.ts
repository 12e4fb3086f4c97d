// Client of a local `serve`'s control socket (used by `status`, `source`, tests).

import { ofetch, FetchError } from "ofetch";
import { ControlError } from "../../errors.ts";
import { codeOf, whyNoAnswer } from "../../util/os-errors.ts";
import type { ServeStatus } from "./status.ts";
import type { RecordingStart } from "./status.ts";
import type { RecordingState } from "../recording/recording.ts";
import type { ThrottleParams, ThrottleState } from "../throttle/throttle-policy.ts";

export interface DirtySince {
  recording?: string;
  instance: string;
  pieceSize: number;
  /** [first piece, count] runs written since the last call. */
  runs: [number, number][];
}

export class ControlClient {
  /**
   * `retryMs`: how long to keep trying while nothing answers on the socket (a serve that
   * is being restarted, by systemd's Restart=on-failure say); a migrating source rides
   * out the gap instead of failing on it. An answer with an error is never retried.
   */
  constructor(
    readonly socketPath: string,
    private readonly opts: { retryMs?: number } = {},
  ) {}

  status(): Promise<ServeStatus> {
    return this.call("GET", "/v1/status");
  }

  startRecording(opts: RecordingStart = {}): Promise<ServeStatus["recording"]> {
    return this.call("POST", "/v1/record", { action: "start", ...opts });
  }

  /** `moved`: the hand-off completed; the serve keeps its fence for good. */
  stopRecording(moved?: { digest?: string; to?: string }): Promise<RecordingState> {
    return this.call("POST", "/v1/record", { action: "stop", moved });
  }

  /**
   * Every delta up to `seq` is shipped (or skipped): the throttle's queue shrinks. `rateCap`
   * (bytes/s) holds the VM's writes to it for a lease the next report renews. Returns what
   * was written since the last call too.
   */
  shipped(seq: bigint, recording?: string, rateCap?: number): Promise<ThrottleState & DirtySince & { rateCapBytesPerSec?: number; log?: { bytes: number; shipBytes: number; maxBytes?: number }; held?: { writes: number; bytes: number } }> {
    return this.call("POST", "/v1/record", { action: "shipped", seq: seq.toString(), recording, rateCap: rateCap ?? 0 });
  }

  /**
   * Raises the bulk copy's cursor to `offset` (recording.ts): once this answers, writes
   * wholly past it are logged without data, and every other write whole. Call it before
   * deciding anything about the range up to `offset`.
   */
  raiseCursor(recording: string, offset: number): Promise<RecordingState> {
    return this.call("POST", "/v1/record", { action: "cursor", recording, offset });
  }

  /** What was written since the last call (the serve's dirty map, cleared as it is read). */
  dirty(recording?: string): Promise<DirtySince> {
    return this.call("POST", "/v1/record", { action: "dirty", recording });
  }

  /** The VM stopped at the source: its last writes go through unthrottled (disk-service.ts vmStopped). */
  vmStopped(recording: string): Promise<ThrottleState & { rateCapBytesPerSec?: number }> {
    return this.call("POST", "/v1/record", { action: "stopped", recording });
  }

  throttle(params: Partial<ThrottleParams>): Promise<ThrottleState> {
    return this.call("POST", "/v1/throttle", params);
  }

  /** Fences (durably) for the hand-off of `recording`; the answer carries the recording's final counts. */
  fence(opts: { recording?: string; reason?: string } = {}): Promise<ServeStatus["fence"] & { recording: ServeStatus["recording"] }> {
    return this.call("POST", "/v1/fence", opts);
  }

  /** Stops a server whose disk moved away, for the VM's return onto its images (disk-service.ts retire). */
  retire(): Promise<{ images: string[]; moved: string }> {
    return this.call("POST", "/v1/retire", {});
  }

  unfence(reason: string): Promise<ServeStatus["fence"]> {
    return this.call("POST", "/v1/fence", { fenced: false, reason });
  }

  private async call<T>(method: "GET" | "POST", path: string, body?: object): Promise<T> {
    const until = Date.now() + (this.opts.retryMs ?? 0);
    for (;;) {
      try {
        // Bun's fetch takes `unix`; ofetch passes unknown options through to it.
        return await ofetch<T>(`http://localhost${path}`, { method, body, unix: this.socketPath, retry: 0 } as never);
      } catch (cause) {
        if (cause instanceof FetchError && cause.data && typeof cause.data === "object" && "error" in cause.data)
          throw new ControlError(`${method} ${path}: ${(cause.data as { error: string }).error}`, { exitCode: 3 });
        if (Date.now() < until) {
          await Bun.sleep(100);
          continue;
        }
        if (cause instanceof FetchError && cause.response) throw new ControlError(`${method} ${path} on ${this.socketPath}: HTTP ${cause.response.status}`, { cause });
        // Nothing answered: say what was tried and why (no such socket, a stale one), not
        // fetch's "Was there a typo in the url or port?".
        const code = codeOf(cause);
        throw new ControlError(`cannot reach the control socket ${this.socketPath}${code ? `: ${whyNoAnswer(this.socketPath, cause)}` : ""}`, {
          cause: code ? undefined : cause,
          hint: "is `wanmig serve` running with this --name and --run-dir?",
        });
      }
    }
  }
}
