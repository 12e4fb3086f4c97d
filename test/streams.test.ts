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
});
