// The paper bench's clients against a real HTTP server on loopback that stops answering for
// a while, as a paused VM would: what they record is what report/disruption.ts measures.
import { describe, expect, test } from "bun:test";
import { measureDisruption } from "../src/report/disruption.ts";
import { type OpLine, postClient, staticClient } from "../scripts/bench/paper-client.ts";

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
});
