// The control API of a `serve` (and of a `dest` once it serves): HTTP/1.1 on a unix
// socket, so only local users with access to the socket file can use it. JSON in, JSON out.
//
//   GET  /v1/status     everything `wanmig status` prints
//   GET  /metrics       the same counters in Prometheus text format
//   POST /v1/record     {"action":"start", "dir"?: path, "owner"?: pid, "maxLogBytes"?: n,
//                         "rateCap"?: B/s, "bulkCursor"?: n} -> recording state (the log's
//                         bound: n, or a share of free space); rateCap as for "shipped", from
//                         the first write; bulkCursor as for "cursor", from the first write
//                       {"action":"stop", "moved"?: {"digest"?, "to"?}} -> recording state;
//                         with "moved" the hand-off completed and the fence is for good
//                       {"action":"shipped", "seq": "N", "recording"?: id, "rateCap"?: B/s}
//                         -> throttle state and what was written since the last call (the
//                         source has shipped every delta up to N; the throttle watches the
//                         queue; rateCap holds the VM's writes to B/s for a 2 s lease)
//                       {"action":"dirty", "recording"?: id} -> written since the last call
//                       {"action":"stopped", "recording"?: id} -> throttle state (the VM
//                         stopped at the source: its writes in flight are no longer held
//                         by the throttle or the cap, until recording starts again)
//                       {"action":"cursor", "recording": id, "offset": n} -> recording state
//                         (the bulk copy's cursor rises to n: writes wholly past it are
//                         logged without data, see recording.ts)
//   POST /v1/throttle   {"threshold"?, "delayUs"?, "maxDelayUs"?, "enabled"?} -> throttle state
//   POST /v1/retire     {} -> {"images", "moved"}: the server stops (its process exits
//                       cleanly, the image's lock released) so that a new incoming migration
//                       of the VM can take its images; refused unless the disk moved away
//   POST /v1/fence      {"recording"?: id, "reason"?} -> fence state and the recording's
//                       counts (durable before the answer); {"fenced": false, "reason"?}
//                       -> lifts it, refused once a hand-off completed
// A "recording" that is not the one the serve holds is refused (409): the caller's view of
// the log is wrong, and acting on it could pass a disk that lacks writes.

import { existsSync, unlinkSync } from "node:fs";
import { claimUnixPath } from "../nbd/nbd-server.ts";
import { listenError } from "../../util/os-errors.ts";
import type { RecordingStart, ServeStatus } from "./status.ts";
import { type ThrottleParams, validateThrottleParams } from "../throttle/throttle-policy.ts";
import { renderMetrics } from "./metrics.ts";

export interface ControlApi {
  stop(): void;
}

class BadRequest extends Error {}

async function jsonBody(req: Request): Promise<Record<string, unknown>> {
  const text = await req.text();
  if (!text.trim()) return {};
  try {
    const v = JSON.parse(text);
    if (v && typeof v === "object" && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {}
  throw new BadRequest("the body must be a JSON object");
}

function optString(body: Record<string, unknown>, key: string): string | undefined {
  const v = body[key];
  if (v === undefined) return undefined;
  if (typeof v !== "string") throw new BadRequest(`${key} must be a string`);
  return v;
}

/**
 * What the control API asks of the serve behind it (disk-service.ts implements it). Declared
 * here, in the API's terms, so that the service imports the API and not the other way round.
 * The answers go out as JSON as they are.
 */
export interface ControlledServe {
  status(): ServeStatus;
  startRecording(start: RecordingStart): unknown;
  stopRecording(outcome?: { moved?: { digest?: string; to?: string } }): unknown;
  raiseCursor(recording: string, offset: number): unknown;
  takeDirty(recording?: string): object;
  noteShipped(seq: bigint, rateCap?: number): object;
  vmStopped(recording?: string): unknown;
  configureThrottle(params: Partial<ThrottleParams>): unknown;
  fence(opts: { recording?: string; reason?: string }): void;
  unfence(reason: string): void;
  retire(): unknown;
}

async function route(req: Request, svc: ControlledServe): Promise<Response> {
  const path = new URL(req.url).pathname;
  const key = `${req.method} ${path}`;
  switch (key) {
    case "GET /v1/status":
      return Response.json(svc.status());
    case "GET /metrics":
      return new Response(renderMetrics(svc.status()), { headers: { "content-type": "text/plain; version=0.0.4" } });
    case "POST /v1/record": {
      const body = await jsonBody(req);
      const recording = optString(body, "recording");
      if (body.action === "start") {
        const max = body.maxLogBytes;
        if (max !== undefined && (typeof max !== "number" || !Number.isSafeInteger(max) || max < 1)) throw new BadRequest("maxLogBytes must be a whole number of bytes >= 1");
        const cap = body.rateCap ?? 0;
        if (typeof cap !== "number" || !Number.isFinite(cap) || cap < 0) throw new BadRequest("rateCap must be a number of bytes per second >= 0");
        const cursor = body.bulkCursor;
        if (cursor !== undefined && (typeof cursor !== "number" || !Number.isSafeInteger(cursor) || cursor < 0)) throw new BadRequest("bulkCursor must be a whole number of bytes >= 0");
        if (body.ranges !== undefined && typeof body.ranges !== "boolean") throw new BadRequest("ranges must be true or false");
        return Response.json(
          svc.startRecording({ dir: typeof body.dir === "string" ? body.dir : undefined, owner: typeof body.owner === "number" ? body.owner : undefined, maxLogBytes: max as number | undefined, rateCap: cap, bulkCursor: cursor, ranges: body.ranges === true }),
        );
      }
      if (body.action === "stop") {
        const moved = body.moved && typeof body.moved === "object" ? (body.moved as { digest?: string; to?: string }) : undefined;
        return Response.json(svc.stopRecording(moved ? { moved } : undefined));
      }
      if (body.action === "shipped") {
        if (typeof body.seq !== "string" || !/^\d+$/.test(body.seq)) throw new BadRequest("seq must be a decimal string");
        const cap = body.rateCap ?? 0;
        if (typeof cap !== "number" || !Number.isFinite(cap) || cap < 0) throw new BadRequest("rateCap must be a number of bytes per second >= 0");
        const dirty = svc.takeDirty(recording);
        return Response.json({ ...svc.noteShipped(BigInt(body.seq), cap), ...dirty });
      }
      if (body.action === "dirty") return Response.json(svc.takeDirty(recording));
      if (body.action === "stopped") return Response.json(svc.vmStopped(recording));
      if (body.action === "cursor") {
        const offset = body.offset;
        if (typeof offset !== "number" || !Number.isSafeInteger(offset) || offset < 0) throw new BadRequest("offset must be a whole number of bytes >= 0");
        if (recording === undefined) throw new BadRequest("cursor needs the recording it is for");
        return Response.json(svc.raiseCursor(recording, offset));
      }
      throw new BadRequest('action must be "start", "stop", "shipped", "dirty", "cursor" or "stopped"');
    }
    case "POST /v1/throttle": {
      let params;
      try {
        params = validateThrottleParams(await jsonBody(req));
      } catch (err) {
        throw new BadRequest((err as Error).message);
      }
      return Response.json(svc.configureThrottle(params));
    }
    case "POST /v1/retire":
      return Response.json(svc.retire());
    case "POST /v1/fence": {
      const body = await jsonBody(req);
      const reason = optString(body, "reason");
      if (body.fenced === false) svc.unfence(reason ?? "lifted by a control request");
      else svc.fence({ recording: optString(body, "recording"), reason });
      const st = svc.status();
      return Response.json({ ...st.fence, recording: st.recording });
    }
  }
  return Response.json({ error: `no such endpoint: ${key}` }, { status: 404 });
}

export async function startControlApi(path: string, svc: ControlledServe): Promise<ControlApi> {
  await claimUnixPath(path, "control socket");
  let server: ReturnType<typeof Bun.serve>;
  try {
    server = Bun.serve({
      unix: path,
      async fetch(req) {
        try {
          return await route(req, svc);
        } catch (err) {
          const status = err instanceof BadRequest ? 400 : 409;
          return Response.json({ error: (err as Error).message }, { status });
        }
      },
    });
  } catch (cause) {
    throw listenError(cause, { path }, "cannot listen for control requests on");
  }
  return {
    stop() {
      server.stop(true);
      if (existsSync(path)) unlinkSync(path);
    },
  };
}
