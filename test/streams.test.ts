// --streams: several TCP connections as one channel (src/net/lanes.ts). Real source, serve
// and dest processes on loopback, under a writer that hits the disk as hard as it can; the
// final check is every migration's: identical, nothing acknowledged lost, writable at
// exactly one host.
import { afterAll, describe, expect, test } from "bun:test";
import { expectMovedWhole, hosts, MiB, removeHosts, spawnSource, withPair } from "./helpers/migration.ts";
import { startProxy } from "./helpers/proxy.ts";
import { stressWriter } from "./helpers/stress-writer.ts";

afterAll(() => removeHosts());

describe("several connections as one channel", () => {
  test("four streams, sealed, under a random 4 KiB writer: identical, nothing acknowledged lost, one host", async () => {
    const h = await hosts(128, 96);
    await withPair(
      h,
      async ({ srv, dst }) => {
        const w = await stressWriter(srv.socket, { pattern: "random4k", bytes: 64 * MiB });
        const run = spawnSource(h, dst.port, ["--secret-file", h.secret, "--streams", "4", "--bandwidth", "400mbit"]);
        const { code, stderr, done } = await run.result();
        await w.stop();
        expect(code, stderr).toBe(0);
        expect(done!.streams).toBe(4);
        expect(stderr).toContain("sending over 4 connections");
        await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
      },
      ["--secret-file", h.secret],
    );
  }, 120_000);

  test("one of four streams cut mid-bulk (a sequential 1 MiB writer): the channel resumes on four new connections from where the destination got; identical, one host", async () => {
    const h = await hosts(256, 192);
    await withPair(h, async ({ srv, dst }) => {
      const proxy = startProxy(dst.port);
      try {
        const w = await stressWriter(srv.socket, { pattern: "seq1m", from: 200 * MiB, bytes: 48 * MiB });
        const run = spawnSource(h, proxy.port, ["--insecure", "--compress", "none", "--streams", "4", "--bandwidth", "400mbit"]);
        while (proxy.bytes < 64 * MiB) await Bun.sleep(20);
        expect(proxy.connections).toBe(4);
        const before = proxy.bytes;
        proxy.cutConnection(2);
        const { code, stderr, done } = await run.result();
        await w.stop();
        expect(code, stderr).toBe(0);
        expect(stderr).toContain("resumed: destination has bulk up to");
        expect(done!.reconnects).toBe(1);
        expect(done!.streams).toBe(4);
        expect(proxy.connections).toBe(8);
        // Resumed, not started over; what crossed again is what was in flight at the cut.
        expect(proxy.bytes - before).toBeLessThan(256 * MiB - 64 * MiB + 48 * MiB);
        expect(done!.bytesResent as number).toBeLessThan(32 * MiB);
        await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
      } finally {
        proxy.stop();
      }
    });
  }, 120_000);

  test("the link lost for 30 s mid-bulk (nothing relayed either way, nothing closed): the same four connections carry on when it returns, nothing sent twice; identical, one host", async () => {
    const h = await hosts(256, 192);
    await withPair(h, async ({ srv, dst }) => {
      const proxy = startProxy(dst.port);
      try {
        const w = await stressWriter(srv.socket, { pattern: "random4k", from: 200 * MiB, bytes: 32 * MiB });
        const run = spawnSource(h, proxy.port, ["--insecure", "--compress", "none", "--streams", "4", "--bandwidth", "400mbit"]);
        while (proxy.bytes < 64 * MiB) await Bun.sleep(20);
        const lostAt = Date.now();
        proxy.loseLinkFor(30_000);
        const { code, stderr, done } = await run.result();
        await w.stop();
        expect(code, stderr).toBe(0);
        expect(Date.now() - lostAt).toBeGreaterThan(30_000);
        expect(done!.reconnects).toBe(0);
        expect(done!.bytesResent).toBe(0);
        expect(proxy.connections).toBe(4);
        await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
      } finally {
        proxy.stop();
      }
    });
  }, 150_000);

  test("all four streams cut and refused for 30 s mid-bulk: resumed by itself from where the destination got; what crossed again is counted, and is what the cut lost", async () => {
    const h = await hosts(256, 224);
    await withPair(h, async ({ srv, dst }) => {
      const proxy = startProxy(dst.port);
      try {
        const w = await stressWriter(srv.socket, { pattern: "seq1m", from: 228 * MiB, bytes: 24 * MiB });
        const run = spawnSource(h, proxy.port, ["--insecure", "--compress", "none", "--streams", "4", "--bandwidth", "400mbit"]);
        while (proxy.bytes < 96 * MiB) await Bun.sleep(20);
        proxy.down(30_000);
        const { code, stderr, done } = await run.result();
        await w.stop();
        expect(code, stderr).toBe(0);
        expect(done!.reconnects as number).toBeGreaterThanOrEqual(5); // tries while it was down, then one that got through
        // The first connection sent the image up to where the destination got, and what the cut lost past it: counted as sent again.
        const reached = Number(/resumed: destination has bulk up to (\d+)/.exec(stderr)![1]);
        const first = (done!.attemptWire as number[])[0]!;
        const resent = done!.bytesResent as number;
        expect(resent).toBeGreaterThan(0);
        expect(Math.abs(first - reached - resent)).toBeLessThan(2 * MiB);
        await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
      } finally {
        proxy.stop();
      }
    });
  }, 150_000);

  test("one of four streams stalls (no byte, no close) mid-bulk: after STALL_MS the channel is closed and resumed; identical, one host", async () => {
    const h = await hosts(256, 192);
    await withPair(h, async ({ srv, dst }) => {
      const proxy = startProxy(dst.port);
      try {
        const w = await stressWriter(srv.socket, { pattern: "random4k", from: 200 * MiB, bytes: 32 * MiB });
        const run = spawnSource(h, proxy.port, ["--insecure", "--compress", "none", "--streams", "4", "--bandwidth", "400mbit"]);
        while (proxy.bytes < 64 * MiB) await Bun.sleep(20);
        proxy.stallConnection(1);
        const { code, stderr, done } = await run.result();
        await w.stop();
        expect(code, stderr).toBe(0);
        // Whichever end saw it first names it: the source (a backlog that never drains) or the destination (a lane that brings nothing).
        expect(stderr + dst.stderr()).toMatch(/stream \d of 4 stalled/);
        expect(done!.reconnects).toBe(1);
        await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
      } finally {
        proxy.stop();
      }
    });
  }, 150_000);
});
