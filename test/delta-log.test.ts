import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, openSync, readFileSync, statSync, truncateSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { DeltaKind, DeltaLogReader, DeltaLogWriter, FILE_HEADER_LEN, RECORD_HEADER_LEN } from "../src/disk/recording/delta-log.ts";
import { ByteQueue } from "../src/util/byte-queue.ts";
import { tempDir } from "./helpers/serve-process.ts";

let dir: ReturnType<typeof tempDir>;
let n = 0;
beforeAll(() => {
  dir = tempDir();
});
afterAll(() => dir?.remove());

function writeLog(records: Array<[number, number, number]>): string {
  const path = join(dir.path, `log${n++}.deltas`);
  const w = new DeltaLogWriter(path, { firstSeq: 7n, imageSize: 1 << 20, createdMs: 1 });
  for (const [off, len, fill] of records) {
    if (fill < 0) w.append(DeltaKind.ZERO, off, len);
    else w.append(DeltaKind.DATA, off, len, Buffer.alloc(len, fill));
  }
  w.close();
  return path;
}

describe("delta log format", () => {
  test("round trip: kinds, offsets, data and sequence numbers", () => {
    const path = writeLog([[0, 10, 1], [4096, 512, -1], [100, 3, 2]]);
    const r = new DeltaLogReader(path);
    expect(r.header.firstSeq).toBe(7n);
    expect(r.header.imageSize).toBe(1 << 20);
    const a = r.next();
    const b = r.next();
    const c = r.next();
    expect(r.next({ final: true })).toBe("end");
    if (a === "end" || b === "end" || c === "end") throw new Error("missing records");
    expect([a.seq, b.seq, c.seq]).toEqual([7n, 8n, 9n]);
    expect(a.kind).toBe(DeltaKind.DATA);
    expect(Buffer.from(a.data).equals(Buffer.alloc(10, 1))).toBe(true);
    expect(b.kind).toBe(DeltaKind.ZERO);
    expect([b.offset, b.length, b.data.length]).toEqual([4096, 512, 0]);
    expect(c.end).toBe(statSync(path).size);
    r.close();
  });

  test("a torn tail reads as 'not yet' while following, and as an error once final", () => {
    const path = writeLog([[0, 100, 1], [200, 100, 2]]);
    truncateSync(path, statSync(path).size - 30);
    const r = new DeltaLogReader(path);
    expect(r.next()).not.toBe("end");
    expect(r.next()).toBe("end");
    expect(() => r.next({ final: true })).toThrow("truncated record");
    r.close();
  });

  test("a log a killed serve left goes on: a torn tail is cut, the last whole record is handed back, appends continue its sequence", () => {
    const path = writeLog([[0, 100, 1], [200, 100, 2], [400, 100, 3]]);
    truncateSync(path, statSync(path).size - 30); // the kill: the third record torn mid-data
    // A source tailing the log through the kill: it reads ahead, the torn record with it.
    const follower = new DeltaLogReader(path);
    expect(follower.next()).not.toBe("end");
    const { writer, last } = DeltaLogWriter.continueLog(path);
    expect(last?.seq).toBe(8n);
    expect(last?.offset).toBe(200);
    expect(writer.next).toBe(9n);
    writer.append(DeltaKind.DATA, 600, 10, Buffer.alloc(10, 4));
    writer.close();
    const b = follower.next({ final: true });
    const c = follower.next({ final: true });
    expect(follower.next({ final: true })).toBe("end");
    if (b === "end" || c === "end") throw new Error("missing records");
    // The record in the torn one's place, not what the follower had read ahead of it.
    expect([b.seq, b.offset, c.seq, c.offset]).toEqual([8n, 200, 9n, 600]);
    follower.close();
  });

  test("a follower reads ahead in blocks: records appended after its block was read are found, and a queue count walks only whole records", () => {
    const path = join(dir.path, `log${n++}.deltas`);
    const w = new DeltaLogWriter(path, { firstSeq: 1n, imageSize: 1 << 30, createdMs: 1 });
    const r = new DeltaLogReader(path);
    let read = 0;
    // 20000 header-only records (640 KB of log, more than a block), read while they are appended.
    for (let i = 0; i < 20000; i++) {
      w.append(DeltaKind.WRITTEN, i * 4096, 4096);
      if (i % 7 === 0) for (let x = r.next(); x !== "end"; x = r.next()) expect(x.seq).toBe(BigInt(++read));
      if (i % 1000 === 0) expect(r.pendingShipBytes()).toBe((i + 1 - read) * (RECORD_HEADER_LEN + 4096));
    }
    for (let x = r.next({ final: true }); x !== "end"; x = r.next({ final: true })) expect([x.seq, x.offset]).toEqual([BigInt(++read), (read - 1) * 4096]);
    expect(read).toBe(20000);
    expect(r.pendingShipBytes()).toBe(0);
    r.close();
    w.close();
  });

  test("a log whose last record is whole goes on after it; an empty log starts at its first sequence", () => {
    const whole = writeLog([[0, 100, 1], [200, 100, 2]]);
    const a = DeltaLogWriter.continueLog(whole);
    expect([a.last?.seq, a.writer.next]).toEqual([8n, 9n]);
    a.writer.close();
    const empty = writeLog([]);
    const b = DeltaLogWriter.continueLog(empty);
    expect([b.last, b.writer.next]).toEqual([undefined, 7n]);
    b.writer.close();
  });

  test("a resumed reader starts at its saved position and sequence", () => {
    const path = writeLog([[0, 8, 1], [8, 8, 2], [16, 8, 3]]);
    const first = new DeltaLogReader(path);
    const a = first.next();
    first.close();
    if (a === "end") throw new Error("missing");
    const again = new DeltaLogReader(path, { position: a.end, nextSeq: a.seq + 1n });
    const b = again.next();
    if (b === "end") throw new Error("missing");
    expect(b.seq).toBe(8n);
    expect(b.offset).toBe(8);
    again.close();
  });

  test("a flipped data bit is caught by the checksum", () => {
    const path = writeLog([[0, 64, 1]]);
    const fd = openSync(path, "r+");
    writeSync(fd, Buffer.from([0xfe]), 0, 1, FILE_HEADER_LEN + RECORD_HEADER_LEN + 5);
    closeSync(fd);
    const r = new DeltaLogReader(path);
    expect(() => r.next({ final: true })).toThrow("checksum mismatch");
    r.close();
  });

  test("a wrong file is refused by its magic", () => {
    const path = join(dir.path, "not-a-log");
    writeFileSync(path, Buffer.alloc(128, 0x41));
    expect(() => new DeltaLogReader(path)).toThrow("not a wanmig delta log");
  });

  test("a writer never reuses an existing file", () => {
    const path = writeLog([]);
    expect(readFileSync(path).length).toBe(FILE_HEADER_LEN);
    expect(() => new DeltaLogWriter(path, { firstSeq: 1n, imageSize: 1, createdMs: 1 })).toThrow();
  });
});

describe("ByteQueue", () => {
  test("takes across chunk boundaries and skips", () => {
    const q = new ByteQueue();
    q.push(Uint8Array.from([1, 2, 3]));
    q.push(Uint8Array.from([4, 5]));
    q.push(Uint8Array.from([6, 7, 8, 9]));
    expect([...q.take(2)]).toEqual([1, 2]);
    expect([...q.take(4)]).toEqual([3, 4, 5, 6]);
    expect(q.skip(2)).toBe(2);
    expect(q.length).toBe(1);
    expect([...q.take(1)]).toEqual([9]);
    expect(q.take(0).length).toBe(0);
    expect(q.skip(5)).toBe(0);
  });

  test("a payload across chunks comes as views of its pieces, in order; inside one chunk as one view", () => {
    const q = new ByteQueue();
    const a = Uint8Array.from([1, 2, 3]);
    q.push(a);
    q.push(Uint8Array.from([4, 5]));
    q.push(Uint8Array.from([6, 7, 8, 9]));
    expect([...(q.takePayload(2) as Uint8Array)]).toEqual([1, 2]);
    const p = q.takePayload(5) as Uint8Array[];
    expect(p.map((x) => [...x])).toEqual([[3], [4, 5], [6, 7]]);
    expect(p[0]!.buffer).toBe(a.buffer); // a view, not a copy
    expect(q.length).toBe(2);
    expect([...(q.takePayload(2) as Uint8Array)]).toEqual([8, 9]);
  });

  test("peekInto copies across chunks and leaves the bytes queued; takeInto then removes them", () => {
    const q = new ByteQueue();
    q.push(Uint8Array.from([1, 2]));
    q.push(Uint8Array.from([3, 4, 5]));
    q.take(1);
    const peeked = new Uint8Array(3);
    q.peekInto(peeked);
    expect([...peeked]).toEqual([2, 3, 4]);
    expect(q.length).toBe(4);
    const taken = new Uint8Array(4);
    q.takeInto(taken);
    expect([...taken]).toEqual([2, 3, 4, 5]);
    expect(q.length).toBe(0);
  });
});
