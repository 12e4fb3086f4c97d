// The destination's page cache behind its bulk copy (write-behind.ts), on synthetic
// sequences of writes and digest progress, and on a real file.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileBackend } from "../src/disk/image/file-backend.ts";
import { LAG_BYTES, WriteBehind } from "../src/disk/image/write-behind.ts";

const MiB = 1024 * 1024;

function recorder() {
  const calls: string[] = [];
  return {
    calls,
    ops: {
      startWriteback: (o: number, l: number) => calls.push(`start ${o / MiB}+${l / MiB}`),
      writeBackAndDrop: (o: number, l: number) => calls.push(`drop ${o / MiB}+${l / MiB}`),
    },
  };
}

describe("WriteBehind", () => {
  test("each write starts its write-back; nothing is dropped before the digest has read it, LAG behind", () => {
    const { calls, ops } = recorder();
    const wb = new WriteBehind(ops);
    for (let at = 0; at < 32 * MiB; at += 4 * MiB) wb.written(at, 4 * MiB);
    expect(calls.filter((c) => c.startsWith("start")).length).toBe(8);
    wb.readTo(LAG_BYTES); // read back to 16 MiB: nothing lies 16 MiB behind that yet
    expect(calls.some((c) => c.startsWith("drop"))).toBe(false);
    wb.readTo(LAG_BYTES + 6 * MiB);
    expect(calls.filter((c) => c.startsWith("drop"))).toEqual(["drop 0+6"]); // adjacent writes merge; the cut is exact
    wb.readTo(32 * MiB + LAG_BYTES);
    expect(calls.filter((c) => c.startsWith("drop"))).toEqual(["drop 0+6", "drop 6+26"]);
  });

  test("writes with gaps (holes skipped) are dropped range by range, never past what was read", () => {
    const { calls, ops } = recorder();
    const wb = new WriteBehind(ops);
    wb.written(0, MiB);
    wb.written(10 * MiB, MiB);
    wb.written(40 * MiB, MiB);
    wb.readTo(30 * MiB);
    expect(calls.filter((c) => c.startsWith("drop"))).toEqual(["drop 0+1", "drop 10+1"]);
  });

  test("on a real file: what was written reads back the same after its pages are dropped", () => {
    const dir = mkdtempSync(join(tmpdir(), "wb-"));
    try {
      const path = join(dir, "img");
      writeFileSync(path, new Uint8Array(48 * MiB));
      const f = new FileBackend(path, false);
      const wb = new WriteBehind(f.pageCache());
      const data = crypto.getRandomValues(new Uint8Array(4 * MiB).subarray(0, 65536));
      const block = new Uint8Array(4 * MiB);
      for (let i = 0; i < block.length; i += data.length) block.set(data, i);
      for (let at = 0; at < 48 * MiB; at += 4 * MiB) {
        f.write(at, block, false);
        wb.written(at, block.length);
        wb.readTo(at);
      }
      wb.readTo(48 * MiB + LAG_BYTES);
      f.close();
      const back = readFileSync(path);
      for (let at = 0; at < 48 * MiB; at += 4 * MiB) expect(back.subarray(at, at + 4 * MiB).equals(block)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
