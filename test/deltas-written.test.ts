// WRITTEN records (a write logged as its range, recording.ts) are shipped with the image's
// content over the range, read only once the write is in the image: once the log holds a
// later record, once a control call made after reading it has answered, or after the fence.
// Here the "serve" is a log and an image we write ourselves, so we choose when each write
// reaches the image and can tell which content the streamer read.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { DeltaKind, DeltaLogWriter, RECORD_HEADER_LEN } from "../src/disk/recording/delta-log.ts";
import { FileBackend } from "../src/disk/image/file-backend.ts";
import { Channel } from "../src/net/channel.ts";
import { Compressor } from "../src/net/compress.ts";
import { DeltaOp, FrameDecoder, MsgType } from "../src/net/protocol.ts";
import { DeltaStreamer } from "../src/phases/deltas.ts";
import { sh, tempDir } from "./helpers/serve-process.ts";

const SIZE = 1 << 20;
let dir: ReturnType<typeof tempDir>;
let n = 0;
beforeAll(() => {
  dir = tempDir();
});
afterAll(() => dir?.remove());

/** A log and an image, a channel whose frames we decode, and a streamer over them. */
async function rig(settle?: () => Promise<unknown>) {
  const image = join(dir.path, `image${n}.raw`);
  await sh(["truncate", "-s", String(SIZE), image]);
  const log = new DeltaLogWriter(join(dir.path, `log${n++}.deltas`), { firstSeq: 1n, imageSize: SIZE, createdMs: 1 });
  const file = new FileBackend(image, false);
  const wire: Uint8Array[] = [];
  const ch = new Channel({ write: (b: Uint8Array) => (wire.push(Uint8Array.from(b)), b.length), end() {} }, true);
  const streamer = new DeltaStreamer(ch, log.path, { compress: new Compressor(0, ch), image, settle });
  const sent = () =>
    new FrameDecoder()
      .push(Buffer.concat(wire))
      .filter((m) => m.type === MsgType.DELTA)
      .map((m) => (m.type === MsgType.DELTA ? { seq: m.seq, op: m.op, offset: m.offset, data: Buffer.from(m.data) } : undefined)!);
  return { log, file, streamer, sent, close: () => (streamer.close(), log.close(), file.close()) };
}

describe("WRITTEN records", () => {
  test("a record with a later one in the log goes with what the image holds; the last one waits for a control call, made after it was read", async () => {
    let settleWrites: (() => void) | undefined;
    const r = await rig(async () => settleWrites?.());
    // Write 1 is in the image; write 2 is logged, and its image write still to come (the
    // serve's turn is not over) until the control call answers.
    r.log.append(DeltaKind.WRITTEN, 0, 4096);
    r.file.write(0, Buffer.alloc(4096, 1), false);
    r.log.append(DeltaKind.WRITTEN, 8192, 4096);
    settleWrites = () => r.file.write(8192, Buffer.alloc(4096, 2), false);
    expect(r.streamer.pendingBytes()).toBe(2 * (RECORD_HEADER_LEN + 4096));
    expect(await r.streamer.pump()).toBe(2);
    const [a, b] = r.sent();
    expect([a!.seq, a!.op, a!.offset, a!.data.equals(Buffer.alloc(4096, 1))]).toEqual([1n, DeltaOp.DATA, 0, true]);
    expect([b!.seq, b!.op, b!.offset, b!.data.equals(Buffer.alloc(4096, 2))]).toEqual([2n, DeltaOp.DATA, 8192, true]);
    expect(r.streamer.settleCalls).toBe(1);
    expect(r.streamer.pendingBytes()).toBe(0);
    r.close();
  });

  test("no control call while each record has a later one; none after the fence (final); a ZERO goes as ZERO", async () => {
    const r = await rig(async () => {
      throw new Error("no control call was needed");
    });
    r.log.append(DeltaKind.WRITTEN, 0, 4096);
    r.file.write(0, Buffer.alloc(4096, 3), false);
    r.log.append(DeltaKind.ZERO, 4096, 4096);
    r.log.append(DeltaKind.AHEAD, 65536, 4096); // logged after its image write: skipped
    r.log.append(DeltaKind.WRITTEN, 16384, 8192);
    r.file.write(16384, Buffer.alloc(8192, 4), false);
    expect(await r.streamer.pump({ final: true })).toBe(3);
    expect(r.sent().map((m) => [m.seq, m.op, m.data.length])).toEqual([
      [1n, DeltaOp.DATA, 4096],
      [2n, DeltaOp.ZERO, 0],
      [4n, DeltaOp.DATA, 8192],
    ]);
    expect(r.sent()[2]!.data.equals(Buffer.alloc(8192, 4))).toBe(true);
    expect(r.streamer.settleCalls).toBe(0);
    r.close();
  });

  test("without a way to settle, the last record is refused rather than read too early", async () => {
    const r = await rig();
    r.log.append(DeltaKind.WRITTEN, 0, 4096);
    await expect(r.streamer.pump()).rejects.toThrow("needs the image read after its write");
    r.close();
  });
});
