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
// The video client is not here yet: a player reading at a constant bit rate through fetch
// has the kernel's socket buffers (megabytes, seconds of video) in front of it, and does not
// see a pause the paper's player saw; it needs a bounded receive buffer.
import { parseArgs } from "node:util";

export interface OpLine {
  start: number;
  end: number;
  ok: boolean;
  id?: number;
  acked?: boolean;
  error?: string;
}

const emit = (op: OpLine): void => void process.stdout.write(`${JSON.stringify(op)}\n`);

async function get(url: string, timeoutMs: number): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const body = await res.text();
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return body;
}

export async function staticClient(url: string, until: number, timeoutMs: number, out: (op: OpLine) => void = emit): Promise<void> {
  while (Date.now() < until) {
    const start = Date.now();
    try {
      await get(url, timeoutMs);
      out({ start, end: Date.now(), ok: true });
    } catch (err) {
      out({ start, end: Date.now(), ok: false, error: (err as Error).message });
    }
    await Bun.sleep(10);
  }
}

export async function postClient(base: string, until: number, timeoutMs: number, out: (op: OpLine) => void = emit): Promise<void> {
  for (let id = 1; Date.now() < until; id++) {
    const start = Date.now();
    try {
      const body = await get(`${base}/cgi-bin/post?id=${id}`, timeoutMs);
      const acked = body.trim() === `posted ${id}`;
      out({ start, end: Date.now(), ok: acked, id, acked });
    } catch (err) {
      out({ start, end: Date.now(), ok: false, id, acked: false, error: (err as Error).message });
    }
    await Bun.sleep(10);
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
    process.stderr.write("usage: paper-client.ts static|post URL [--duration S] [--timeout-ms MS]\n");
    process.exit(2);
  }
  const until = Date.now() + Number(values.duration) * 1000;
  const timeoutMs = Number(values["timeout-ms"]);
  if (kind === "static") await staticClient(url, until, timeoutMs);
  else if (kind === "post") await postClient(url, until, timeoutMs);
  else {
    process.stderr.write(`unknown client ${kind}\n`);
    process.exit(2);
  }
}
