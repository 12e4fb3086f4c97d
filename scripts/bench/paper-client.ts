// The paper bench's clients (issue 17): each runs outside the guest, in the client's
// network namespace, and prints one JSON line per operation ({start, end, ok, ...}, ms on
// this host's clock), which report/disruption.ts turns into the paper's disruption time.
//
//   bun scripts/bench/paper-client.ts static URL   [--duration S] [--timeout-ms MS]
//       GET URL again and again (a closed loop, 10 ms apart): the static web server.
//   bun scripts/bench/paper-client.ts post BASE    [--duration S] [--timeout-ms MS]
//       GET BASE/cgi-bin/post?id=N, N = 1, 2, …: each answer "posted N" is an acknowledged
//       post (the line says id and acked); the bench checks afterwards that every acked id
//       is in the guest's file.
//   bun scripts/bench/paper-client.ts video URL   [--duration S] [--timeout-ms MS]
//       Streams URL (the guest's /cgi-bin/video, which the server paces at the video's
//       bit rate) and reads it as it comes: each 32 KiB that arrives is one operation,
//       from the previous one's arrival to its own, so a stall is a long operation. The
//       pacing is the server's, as a streaming server's is: a client reading at a constant
//       rate from a server that sends as fast as it can has the kernel's socket buffers
//       (seconds of video) in front of it, and would not see a pause. No data for
//       --timeout-ms, or the stream ending: a failed operation, and it reconnects.
import { parseArgs } from "node:util";

export interface OpLine {
  start: number;
  end: number;
  ok: boolean;
  id?: number;
  acked?: boolean;
  error?: string;
  /** Still waiting when the client was stopped: not a failure of its own, but the time counts. */
  stopped?: boolean;
}

const emit = (op: OpLine): void => void process.stdout.write(`${JSON.stringify(op)}\n`);

/**
 * When the operation under way began (undefined between operations). A client stopped
 * while it waits prints that operation as failed, up to the stop: a client that hung for
 * the rest of the run must not look like one that was never disrupted.
 */
let inFlightSince: number | undefined;

async function get(url: string, timeoutMs: number): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const body = await res.text();
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return body;
}

export async function staticClient(url: string, until: number, timeoutMs: number, out: (op: OpLine) => void = emit): Promise<void> {
  while (Date.now() < until) {
    const start = (inFlightSince = Date.now());
    try {
      await get(url, timeoutMs);
      out({ start, end: Date.now(), ok: true });
    } catch (err) {
      out({ start, end: Date.now(), ok: false, error: (err as Error).message });
    }
    inFlightSince = undefined;
    await Bun.sleep(10);
  }
}

export async function postClient(base: string, until: number, timeoutMs: number, out: (op: OpLine) => void = emit): Promise<void> {
  for (let id = 1; Date.now() < until; id++) {
    const start = (inFlightSince = Date.now());
    try {
      const body = await get(`${base}/cgi-bin/post?id=${id}`, timeoutMs);
      const acked = body.trim() === `posted ${id}`;
      out({ start, end: Date.now(), ok: acked, id, acked });
    } catch (err) {
      out({ start, end: Date.now(), ok: false, id, acked: false, error: (err as Error).message });
    }
    inFlightSince = undefined;
    await Bun.sleep(10);
  }
}

export const VIDEO_CHUNK = 32 * 1024;

export async function videoClient(url: string, until: number, timeoutMs: number, out: (op: OpLine) => void = emit): Promise<void> {
  while (Date.now() < until) {
    let last = (inFlightSince = Date.now());
    const stop = new AbortController();
    let watchdog = setTimeout(() => stop.abort(), timeoutMs);
    try {
      const res = await fetch(url, { signal: stop.signal });
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      const reader = res.body.getReader();
      let pending = 0;
      while (Date.now() < until) {
        const { done, value } = await reader.read();
        if (done) throw new Error("the stream ended");
        clearTimeout(watchdog);
        watchdog = setTimeout(() => stop.abort(), timeoutMs);
        pending += value.length;
        for (; pending >= VIDEO_CHUNK; pending -= VIDEO_CHUNK) {
          const now = Date.now();
          out({ start: last, end: now, ok: true });
          last = inFlightSince = now;
        }
      }
      stop.abort();
    } catch (err) {
      out({ start: last, end: Date.now(), ok: false, error: (err as Error).message });
      await Bun.sleep(10);
    } finally {
      clearTimeout(watchdog);
      inFlightSince = undefined;
    }
  }
}

if (import.meta.main) {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: {
      duration: { type: "string", default: "60" },
      "timeout-ms": { type: "string", default: "30000" },
    },
  });
  const [kind, url] = positionals;
  if (!kind || !url) {
    process.stderr.write("usage: paper-client.ts static|post|video URL [--duration S] [--timeout-ms MS]\n");
    process.exit(2);
  }
  process.on("SIGTERM", () => {
    if (inFlightSince !== undefined) emit({ start: inFlightSince, end: Date.now(), ok: false, stopped: true, error: "no answer yet when the client was stopped" });
    process.exit(0);
  });
  const until = Date.now() + Number(values.duration) * 1000;
  const timeoutMs = Number(values["timeout-ms"]);
  if (kind === "static") await staticClient(url, until, timeoutMs);
  else if (kind === "post") await postClient(url, until, timeoutMs);
  else if (kind === "video") await videoClient(url, until, timeoutMs);
  else {
    process.stderr.write(`unknown client ${kind}\n`);
    process.exit(2);
  }
}
