// The paper bench's clients against a real HTTP server on loopback that stops answering for
// a while, as a paused VM would: what they record is what report/disruption.ts measures.
import { describe, expect, test } from "bun:test";
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
});
