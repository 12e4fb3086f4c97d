// The paper bench's clients against a real HTTP server on loopback that stops answering for
// a while, as a paused VM would: what they record is what report/disruption.ts measures.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { measureDisruption } from "../src/report/disruption.ts";
import { type OpLine, postClient, staticClient, VIDEO_CHUNK, videoClient } from "../scripts/bench/paper-client.ts";

/** A server that holds every request arriving in [pauseFrom, pauseTo) until pauseTo. */
function pausingServer(pauseFrom: number, pauseTo: number) {
  const hold = async () => {
    const now = Date.now();
    if (now >= pauseFrom && now < pauseTo) await Bun.sleep(pauseTo - now);
  };
  const posts: number[] = [];
  return {
    posts,
    server: Bun.serve({
      port: 0,
      async fetch(req) {
        const url = new URL(req.url);
        await hold();
        if (url.pathname === "/cgi-bin/post") {
          const id = Number(url.searchParams.get("id"));
          posts.push(id);
          return new Response(`posted ${id}\n`);
        }
        return new Response("static page\n");
      },
    }),
  };
}

describe("the paper bench's clients", () => {
  test("static and post: a 1.5 s pause is measured as about 1.5 s of disruption; every acknowledged post reached the server", async () => {
    const t0 = Date.now();
    const { server, posts } = pausingServer(t0 + 1500, t0 + 3000);
    try {
      const base = `http://127.0.0.1:${server.port}`;
      const s: OpLine[] = [];
      const p: OpLine[] = [];
      await Promise.all([staticClient(`${base}/`, t0 + 4500, 10_000, (op) => s.push(op)), postClient(base, t0 + 4500, 10_000, (op) => p.push(op))]);
      for (const ops of [s, p]) {
        const d = measureDisruption(ops, { baselineUntil: t0 + 1400 });
        expect(d.disruptionMs).toBeGreaterThan(1000);
        expect(d.disruptionMs).toBeLessThan(2500);
      }
      const acked = p.filter((op) => op.acked).map((op) => op.id!);
      expect(acked.length).toBeGreaterThan(10);
      for (const id of acked) expect(posts).toContain(id);
    } finally {
      server.stop(true);
    }
  });

  test("video: a paced stream that stops for 1.5 s is measured as about 1.5 s of disruption; a stream that dies is a failure, and the client reconnects", async () => {
    const t0 = Date.now();
    let connections = 0;
    // 32 KiB every 100 ms, silent in [1.5 s, 3 s); the first connection dies at 3.5 s.
    const server = Bun.serve({
      port: 0,
      fetch() {
        const first = connections++ === 0;
        let timer: ReturnType<typeof setInterval>;
        const body = new ReadableStream({
          start(c) {
            timer = setInterval(() => {
              const now = Date.now() - t0;
              if (first && now >= 3500) {
                clearInterval(timer);
                c.close(); // the VM went away
              } else if (now < 1500 || now >= 3000) c.enqueue(new Uint8Array(VIDEO_CHUNK));
            }, 100);
          },
          cancel: () => clearInterval(timer),
        });
        return new Response(body);
      },
    });
    try {
      const ops: OpLine[] = [];
      await videoClient(`http://127.0.0.1:${server.port}/`, t0 + 5000, 10_000, (op) => ops.push(op));
      const d = measureDisruption(ops, { baselineUntil: t0 + 1400 });
      expect(d.baselineGapMs).toBeGreaterThan(50);
      expect(d.baselineGapMs).toBeLessThan(200);
      expect(d.disruptionMs).toBeGreaterThan(900);
      expect(d.disruptionMs).toBeLessThan(2000);
      expect(ops.filter((op) => !op.ok).length).toBe(1);
      expect(connections).toBe(2);
      expect(ops.filter((op) => op.ok && op.start > t0 + 3600).length).toBeGreaterThan(5); // it streams again
    } finally {
      server.stop(true);
    }
  }, 20_000);

  test("a client stopped while it waits prints that operation as failed, up to the stop: a hang is not mistaken for no disruption", async () => {
    const server = Bun.serve({ port: 0, fetch: () => new Promise<Response>(() => undefined) }); // never answers
    try {
      const client = Bun.spawn([process.execPath, join(import.meta.dir, "..", "scripts", "bench", "paper-client.ts"), "static", `http://127.0.0.1:${server.port}/`], { stdout: "pipe" });
      await Bun.sleep(1500);
      const stoppedAt = Date.now();
      client.kill("SIGTERM");
      expect(await client.exited).toBe(0);
      const ops = (await new Response(client.stdout).text()).trim().split("\n").map((l) => JSON.parse(l) as OpLine);
      expect(ops).toHaveLength(1);
      expect(ops[0]!.ok).toBe(false);
      expect(ops[0]!.error).toContain("stopped");
      expect(ops[0]!.stopped).toBe(true);
      expect(ops[0]!.end - ops[0]!.start).toBeGreaterThan(1000);
      expect(Math.abs(ops[0]!.end - stoppedAt)).toBeLessThan(500);
    } finally {
      server.stop(true);
    }
  });
});
