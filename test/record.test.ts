// Record mode: the delta log plus a copy of the image taken after recording began must
// rebuild the live image byte for byte, whoever wrote and however the writes interleaved.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { DeltaKind, DeltaLogReader, replayDeltaLog } from "../src/disk/recording/delta-log.ts";
import { FileBackend } from "../src/disk/image/file-backend.ts";
import { Cmd, CmdFlag } from "../src/disk/nbd/nbd-protocol.ts";
import { RawNbd } from "./helpers/raw-nbd.ts";
import { randomFile, type ServeHandle, sh, startServe, tempDir } from "./helpers/serve-process.ts";

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
let dir: ReturnType<typeof tempDir>;
let srv: ServeHandle;
let image: string;

beforeAll(async () => {
  dir = tempDir();
  image = join(dir.path, "disk.img");
  await randomFile(image, SIZE);
  srv = await startServe({ image, runDir: dir.path });
});
afterAll(async () => {
  await srv?.stop();
  dir?.remove();
});

function replayOnto(copy: string, log: string): number {
  const fb = new FileBackend(copy, false);
  try {
    return replayDeltaLog(log, { write: (o, d) => void fb.write(o, d, false), zero: (o, l) => void fb.zero(o, l, false, true) });
  } finally {
    fb.close();
  }
}

/** Zeroes and trims from a client of our own (fio sends only writes). */
async function zeroesAndTrims(rounds: number): Promise<void> {
  const c = await RawNbd.connect(srv.socket);
  await c.go();
  for (let i = 0; i < rounds; i++) {
    const off = Math.floor(Math.random() * (SIZE / 512 - 256)) * 512;
    const len = (1 + Math.floor(Math.random() * 128)) * 512;
    c.request(i % 2 ? Cmd.TRIM : Cmd.WRITE_ZEROES, off, len, { flags: i % 3 === 0 && i % 2 === 0 ? CmdFlag.NO_HOLE : 0 });
    expect((await c.reply()).error).toBe(0);
    await Bun.sleep(2);
  }
  c.disconnect();
}

describe("record mode", () => {
  test("two clients write at random; replaying the log on the snapshot gives the live image", async () => {
    const rec = await srv.ctl.startRecording();
    expect(rec.active).toBe(true);
    expect(rec.path).toStartWith(dir.path);
    const before = await srv.ctl.status();
    expect(before.mode).toBe("recording");

    // Snapshot at the moment recording started (no writer runs yet).
    const snapshot = join(dir.path, "snapshot.img");
    copyFileSync(image, snapshot);

    // Two fio connections write overlapping random ranges while a third client zeroes
    // and trims, and a "bulk copy" reads the image through NBD at the same time.
    const live = join(dir.path, "live-copy.img");
    const fio = sh([
      "fio", "--name=rec", "--ioengine=nbd", `--uri=${srv.uri}`, "--rw=randwrite", "--bsrange=512-64k",
      "--iodepth=16", "--numjobs=2", `--size=${SIZE}`, "--io_size=6M", "--randrepeat=0",
      "--output-format=json", `--output=${join(dir.path, "fio.json")}`,
    ]);
    const zt = zeroesAndTrims(60);
    await Bun.sleep(50);
    const copy = sh(["nbdcopy", srv.uri, live]);
    await Promise.all([fio, zt, copy]);

    const after = await srv.ctl.status();
    const stopped = await srv.ctl.stopRecording();
    const ops = after.io.writes - before.io.writes + after.io.zeroes - before.io.zeroes + after.io.trims - before.io.trims;
    expect(stopped.records).toBe(ops);
    expect(stopped.records).toBeGreaterThan(200);

    // The test must be able to fail: the snapshot differs from the image before replay.
    expect((await sh(["cmp", "-s", snapshot, image], { allowFail: true })).code).toBe(1);
    expect(replayOnto(snapshot, stopped.path!)).toBe(stopped.records);
    await sh(["cmp", snapshot, image]);

    // The migration case: a copy read while the writes ran, plus the log, is exact too.
    replayOnto(live, stopped.path!);
    await sh(["cmp", live, image]);
  });

  test("the bulk copy's cursor: writes wholly past it are logged without data, the rest whole; it never falls", async () => {
    const rec = await srv.ctl.startRecording({ bulkCursor: 0 });
    const c = await RawNbd.connect(srv.socket);
    await c.go();
    try {
      expect((await srv.ctl.raiseCursor(rec.id!, 8 * MiB)).bulkCursor).toBe(8 * MiB);
      expect((await srv.ctl.raiseCursor(rec.id!, 4 * MiB)).bulkCursor).toBe(8 * MiB); // a lower offset changes nothing
      await c.write(8 * MiB, Buffer.alloc(65536, 1)); // past it: AHEAD
      await c.write(4 * MiB, Buffer.alloc(4096, 2)); // behind it: whole
      await c.write(8 * MiB - 4096, Buffer.alloc(8192, 3)); // across it: the part behind whole, the rest AHEAD
      const st = await srv.ctl.status();
      expect(st.recording.aheadBytes).toBe(65536 + 4096);
      expect(st.recording.splits).toBe(1);
      expect(st.recording.records).toBe(st.recording.applied + 1);
      const reader = new DeltaLogReader(rec.path!);
      const kinds = [];
      for (let r = reader.next(); r !== "end"; r = reader.next()) kinds.push([r.kind, r.offset, r.data.length, r.length]);
      reader.close();
      expect(kinds).toEqual([
        [DeltaKind.AHEAD, 8 * MiB, 0, 65536],
        [DeltaKind.DATA, 4 * MiB, 4096, 4096],
        [DeltaKind.DATA, 8 * MiB - 4096, 4096, 4096],
        [DeltaKind.AHEAD, 8 * MiB, 0, 4096],
      ]);
      // Another recording's cursor is refused: the caller's view of the log is wrong.
      await expect(srv.ctl.raiseCursor("someone-else", 0)).rejects.toThrow(/not someone-else/);
    } finally {
      c.disconnect();
      await srv.ctl.stopRecording();
    }
    // A recording without a cursor (a serve restarted under it) logs every write whole;
    // its first cursor starts past all of them, or a whole record could overlap an AHEAD one.
    const again = await srv.ctl.startRecording();
    expect(again.bulkCursor).toBeUndefined();
    const w = await RawNbd.connect(srv.socket);
    await w.go();
    await w.write(20 * MiB, Buffer.alloc(4096, 4));
    w.disconnect();
    expect((await srv.ctl.raiseCursor(again.id!, 8 * MiB)).bulkCursor).toBe(20 * MiB + 4096);
    await srv.ctl.stopRecording();
  });

  test("ranges: a write behind the cursor is logged as WRITTEN, 32 bytes; its part past the cursor AHEAD, after it; the ship cost counts the ranges", async () => {
    const rec = await srv.ctl.startRecording({ bulkCursor: 8 * MiB, ranges: true });
    expect(rec.ranges).toBe(true);
    const c = await RawNbd.connect(srv.socket);
    await c.go();
    try {
      await c.write(4 * MiB, Buffer.alloc(65536, 5)); // behind: WRITTEN
      await c.write(8 * MiB - 4096, Buffer.alloc(8192, 6)); // across: WRITTEN, then AHEAD
      c.request(Cmd.WRITE_ZEROES, 2 * MiB, 8192);
      expect((await c.reply()).error).toBe(0); // a zero stays ZERO
      const st = await srv.ctl.status();
      const reader = new DeltaLogReader(rec.path!);
      const kinds = [];
      for (let r = reader.next(); r !== "end"; r = reader.next()) kinds.push([r.kind, r.offset, r.data.length, r.length]);
      reader.close();
      expect(kinds).toEqual([
        [DeltaKind.WRITTEN, 4 * MiB, 0, 65536],
        [DeltaKind.WRITTEN, 8 * MiB - 4096, 0, 4096],
        [DeltaKind.AHEAD, 8 * MiB, 0, 4096],
        [DeltaKind.ZERO, 2 * MiB, 0, 8192],
      ]);
      expect(st.recording.bytes).toBe(4 * 32);
      expect(st.recording.shipBytes).toBe(4 * 32 + 65536 + 4096);
      // What the log stands for is the live image's: replayed with it, onto a copy without these writes.
      const copy = join(dir.path, "ranges-copy.img");
      await sh(["truncate", "-s", String(SIZE), copy]);
      const live = new FileBackend(image, true);
      const fb = new FileBackend(copy, false);
      const w = { write: (o: number, d: Uint8Array) => void fb.write(o, d, false), zero: (o: number, l: number) => void fb.zero(o, l, false, true) };
      expect(() => replayDeltaLog(rec.path!, w)).toThrow("needs the live image");
      replayDeltaLog(rec.path!, w, (o, l) => {
        const b = Buffer.alloc(l);
        live.read(o, b);
        return b;
      });
      const got = Buffer.alloc(65536);
      fb.read(4 * MiB, got);
      expect(got.equals(Buffer.alloc(65536, 5))).toBe(true);
      live.close();
      fb.close();
    } finally {
      c.disconnect();
      await srv.ctl.stopRecording();
    }
  });

  test("a copy that raises the cursor before it reads each range, plus the log, rebuilds the live image under a writer ahead of it and behind it", async () => {
    const rec = await srv.ctl.startRecording({ bulkCursor: 0 });
    const before = await srv.ctl.status();
    // Each 4 KiB block written at most once, in random order, with fresh random bytes: no
    // later write can hide one the log lost (fio's rewrites would).
    const c = await RawNbd.connect(srv.socket);
    await c.go();
    const order = [...Array(SIZE / 4096).keys()].sort(() => Math.random() - 0.5);
    let copying = true;
    const writes = (async () => {
      for (const block of order) {
        if (!copying) break;
        expect(await c.write(block * 4096, randomBytes(4096))).toBe(0);
      }
    })();
    const zt = zeroesAndTrims(60);
    // The bulk copy's order: cursor past the range, then read it (here from the file, which
    // holds every completed write: serve writes synchronously).
    const copy = join(dir.path, "cursor-copy.img");
    await sh(["truncate", "-s", String(SIZE), copy]);
    const src = new FileBackend(image, true);
    const dst = new FileBackend(copy, false);
    const piece = Buffer.alloc(MiB);
    try {
      for (let at = 0; at < SIZE; at += MiB) {
        await srv.ctl.raiseCursor(rec.id!, at + MiB);
        src.read(at, piece);
        dst.write(at, piece, false);
        await Bun.sleep(40); // the writers land ahead of the copy and behind it
      }
    } finally {
      copying = false;
      src.close();
      dst.close();
    }
    await Promise.all([writes, zt]);
    c.disconnect();
    const after = await srv.ctl.status();
    const stopped = await srv.ctl.stopRecording();
    const ops = after.io.writes - before.io.writes + after.io.zeroes - before.io.zeroes + after.io.trims - before.io.trims;
    expect(stopped.records).toBe(ops + after.recording.splits);
    // Writes ahead of the copy carried no data: the log is smaller than what was written.
    expect(after.recording.aheadBytes).toBeGreaterThan(MiB);
    expect(stopped.bytes).toBeLessThan(after.io.bytesWritten - before.io.bytesWritten);
    expect((await sh(["cmp", "-s", copy, image], { allowFail: true })).code).toBe(1);
    replayOnto(copy, stopped.path!);
    await sh(["cmp", copy, image]);
  }, 60_000);

  test("the log can be tailed while it grows, in order, without gaps", async () => {
    const rec = await srv.ctl.startRecording();
    const reader = new DeltaLogReader(rec.path!);
    const c = await RawNbd.connect(srv.socket);
    await c.go();
    let seen = 0;
    for (let i = 0; i < 50; i++) {
      expect(await c.write(i * 4096, Buffer.alloc(4096, i + 1))).toBe(0);
      // The write was acknowledged, so its record must already be readable.
      const r = reader.next();
      expect(r).not.toBe("end");
      if (r === "end") break;
      expect(r.offset).toBe(i * 4096);
      expect(r.data[0]).toBe(i + 1);
      expect(r.seq).toBe(BigInt(rec.firstSeq!) + BigInt(i));
      seen++;
    }
    expect(reader.next()).toBe("end");
    c.disconnect();
    reader.close();
    await srv.ctl.stopRecording();
    expect(seen).toBe(50);
  });

  test("sequence numbers continue across recordings of one server", async () => {
    const a = await srv.ctl.startRecording();
    const c = await RawNbd.connect(srv.socket);
    await c.go();
    await c.write(0, Buffer.alloc(512, 9));
    const stopA = await srv.ctl.stopRecording();
    const b = await srv.ctl.startRecording();
    await c.write(0, Buffer.alloc(512, 8));
    await srv.ctl.stopRecording();
    c.disconnect();
    expect(b.path).not.toBe(a.path);
    expect(BigInt(b.firstSeq!)).toBe(BigInt(stopA.nextSeq!));
  });

  test("writes outside record mode are not logged", async () => {
    const rec = await srv.ctl.startRecording();
    const stopped = await srv.ctl.stopRecording();
    const c = await RawNbd.connect(srv.socket);
    await c.go();
    await c.write(8192, Buffer.alloc(4096, 5));
    c.disconnect();
    const reader = new DeltaLogReader(rec.path!);
    expect(reader.next({ final: true })).toBe("end");
    reader.close();
    expect(stopped.records).toBe(0);
  });
});
