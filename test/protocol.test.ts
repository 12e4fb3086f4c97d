// The wire protocol: every message round-trips; malformed input is rejected with a clear error.
import { describe, expect, test } from "bun:test";
import { DeltaOp, encodeFrame, FRAME_HEADER_LEN, FrameDecoder, MAX_PAYLOAD, type Message, msg, MsgType } from "../src/net/protocol.ts";
import { ProtocolError } from "../src/net/errors.ts";

const all: Message[] = [
  msg.hello({ nonce: "ab".repeat(16), name: "web1", size: 10 * 2 ** 30, blockSize: 65536, recording: "web1.1764000000000.0.deltas" }),
  msg.welcome({ nonce: "cd".repeat(16), proof: "ef".repeat(32) }),
  msg.auth("01".repeat(32)),
  msg.ready(123 * 65536, 42n, true),
  msg.baseHashes(8 * 2 ** 20, new Uint8Array(64 * 16).fill(3)),
  msg.bulk(2 ** 40, 5, Buffer.from("hello")),
  msg.bulk(0, 65536, Buffer.from([1, 2, 3]), true),
  msg.zero(65536, 1 << 20),
  msg.delta({ seq: 2n ** 63n + 5n, op: DeltaOp.DATA, offset: 4096, length: 3, compressed: false, data: Buffer.from([7, 8, 9]) }),
  msg.delta({ seq: 9n, op: DeltaOp.ZERO, offset: 0, length: 512, compressed: false, data: new Uint8Array(0) }),
  msg.delta({ seq: 12n, op: DeltaOp.COPY, offset: 8192, length: 2, compressed: false, data: Buffer.from([1, 2]) }),
  msg.delta({ seq: 12n, op: DeltaOp.COPY_END, offset: 1 << 20, length: 1 << 20, compressed: true, data: Buffer.from([9]) }),
  msg.ack(2 ** 33, 77n),
  msg.ack(0, 5n, 3),
  msg.bulkEnd(10 * 2 ** 30),
  msg.barrier(1000n, 4096, "00".repeat(32)),
  msg.checksum("22".repeat(32)),
  msg.done("11".repeat(32)),
  msg.redirect({ mode: "vxlan", iface: "wm-web1", vni: 4242, table: 4242, oldIp: "192.0.2.10", sourceAddr: "198.51.100.1", destAddr: "203.0.113.2", newIp: "203.0.113.10", idleMs: 30000 }),
  msg.redirectReady("wm-web1"),
  msg.error("disk full at the destination"),
];

/** Comparable form: bigints as strings, byte arrays (Buffer or Uint8Array) as plain arrays. */
function norm(m: Message): unknown {
  const flat: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m)) flat[k] = typeof v === "bigint" ? `${v}n` : v instanceof Uint8Array ? [...v] : v;
  return flat;
}

describe("frames", () => {
  test("every message type round-trips, one frame at a time", () => {
    for (const m of all) {
      const [back, ...rest] = new FrameDecoder().push(encodeFrame(m));
      expect(rest).toEqual([]);
      expect(norm(back!)).toEqual(norm(m));
    }
  });

  test("a stream split at every byte boundary decodes to the same messages", () => {
    const stream = Buffer.concat(all.map((m) => encodeFrame(m)));
    for (const step of [1, 7, 13, 4096]) {
      const d = new FrameDecoder();
      const got: Message[] = [];
      for (let i = 0; i < stream.length; i += step) got.push(...d.push(stream.subarray(i, i + step)));
      expect(got.map(norm)).toEqual(all.map(norm));
    }
  });

  test("a recycled frame buffer takes a later frame; one still held is never overwritten", () => {
    const block = (fill: number) => new Uint8Array(1024 * 1024).fill(fill);
    const d = new FrameDecoder();
    const stream = (m: Message) => {
      const f = encodeFrame(m);
      const out: Message[] = [];
      for (let i = 0; i < f.length; i += 65536) out.push(...d.push(f.subarray(i, i + 65536)));
      return out[0] as Extract<Message, { type: typeof MsgType.BULK }>;
    };
    const a = stream(msg.bulk(0, 1 << 20, block(1)));
    const b = stream(msg.bulk(0, 1 << 20, block(2))); // a is still held: b gets a buffer of its own
    expect(b.data.buffer).not.toBe(a.data.buffer);
    expect(a.data.every((x) => x === 1)).toBe(true);
    d.recycle(a.data);
    d.recycle(a.data); // twice is once
    const c = stream(msg.bulk(0, 1 << 20, block(3)));
    expect(c.data.buffer).toBe(a.data.buffer);
    expect(c.data.every((x) => x === 3)).toBe(true);
    expect(b.data.every((x) => x === 2)).toBe(true);
    const e = stream(msg.bulk(0, 1 << 20, block(4))); // the buffer recycled twice went to c alone
    expect(e.data.buffer).not.toBe(c.data.buffer);
  });

  test("a flipped bit anywhere is caught by the checksum", () => {
    const f = encodeFrame(msg.bulk(0, 5, Buffer.from("hello")));
    for (const at of [FRAME_HEADER_LEN, FRAME_HEADER_LEN + 12, f.length - 1]) {
      const bad = Buffer.from(f);
      bad[at]! ^= 0x10;
      expect(() => new FrameDecoder().push(bad)).toThrow("checksum mismatch");
    }
  });

  test("wrong magic, oversize length, unknown type and reserved bits are rejected", () => {
    const good = encodeFrame(msg.ack(0, 0n));
    const magic = Buffer.from(good);
    magic.write("HTTP", 0);
    expect(() => new FrameDecoder().push(magic)).toThrow("bad frame magic");
    const big = Buffer.from(good);
    big.writeUInt32BE(MAX_PAYLOAD + 1, 8);
    expect(() => new FrameDecoder().push(big)).toThrow("exceeds");
    const reserved = Buffer.from(good);
    reserved.writeUInt16BE(1, 6);
    expect(() => new FrameDecoder().push(reserved)).toThrow("reserved");
    const unknown = Buffer.from(good);
    unknown.writeUInt8(99, 4);
    unknown.writeUInt32BE(Bun.hash.crc32(unknown.subarray(0, unknown.length - 4)) >>> 0, unknown.length - 4);
    expect(() => new FrameDecoder().push(unknown)).toThrow("unknown message type 99");
  });

  test("malformed payloads: JSON missing fields, short binary headers, length lies", () => {
    const frame = (type: number, payload: Buffer, flags = 0) => {
      const f = Buffer.alloc(12 + payload.length + 4);
      f.writeUInt32BE(0x574d4731, 0);
      f.writeUInt8(type, 4);
      f.writeUInt8(flags, 5);
      f.writeUInt32BE(payload.length, 8);
      payload.copy(f, 12);
      f.writeUInt32BE(Bun.hash.crc32(f.subarray(0, 12 + payload.length)) >>> 0, 12 + payload.length);
      return f;
    };
    expect(() => new FrameDecoder().push(frame(MsgType.HELLO, Buffer.from('{"name":"x"}')))).toThrow("lacks required fields");
    expect(() => new FrameDecoder().push(frame(MsgType.AUTH, Buffer.from("{not json")))).toThrow("not JSON");
    expect(() => new FrameDecoder().push(frame(MsgType.ACK, Buffer.alloc(3)))).toThrow("needs at least 28");
    expect(() => new FrameDecoder().push(frame(MsgType.BASE_HASHES, Buffer.alloc(8 + 17)))).toThrow("not a whole number of hashes");
    const lie = Buffer.alloc(12 + 3);
    lie.writeUInt32BE(10, 8);
    expect(() => new FrameDecoder().push(frame(MsgType.BULK, lie))).toThrow("says 10 bytes but carries 3");
    expect(() => new FrameDecoder().push(frame(MsgType.ACK, Buffer.alloc(16), 0x80))).toThrow("unknown flags");
    const op5 = Buffer.alloc(21);
    op5.writeUInt8(5, 8);
    expect(() => new FrameDecoder().push(frame(MsgType.DELTA, op5))).toThrow("unknown op 5");
    try {
      new FrameDecoder().push(frame(MsgType.ZERO, Buffer.alloc(2)));
      throw new Error("not rejected");
    } catch (err) {
      expect(err).toBeInstanceOf(ProtocolError);
    }
  });

  test("encode refuses a payload over the limit", () => {
    expect(() => encodeFrame(msg.bulk(0, 1, Buffer.alloc(MAX_PAYLOAD + 1)))).toThrow("exceeds");
  });
});

import { newNonce, proof, verifyProof } from "../src/net/auth.ts";

describe("authentication proofs", () => {
  const secret = Buffer.from("correct horse battery staple");
  test("each side verifies the other's proof; a wrong secret or a reflected proof fails", () => {
    const ns = newNonce();
    const nd = newNonce();
    const destProof = proof(secret, "dest", ns, nd);
    expect(verifyProof(secret, "dest", nd, ns, destProof)).toBe(true); // the source checks the dest
    const srcProof = proof(secret, "source", nd, ns);
    expect(verifyProof(secret, "source", ns, nd, srcProof)).toBe(true); // the dest checks the source
    expect(verifyProof(Buffer.from("wrong secret, same length!!!"), "dest", nd, ns, destProof)).toBe(false);
    expect(verifyProof(secret, "source", ns, nd, destProof)).toBe(false); // reflection
    expect(verifyProof(secret, "dest", newNonce(), ns, destProof)).toBe(false); // replay in a new session
    expect(verifyProof(secret, "dest", nd, ns, "zz")).toBe(false);
  });
});

import { parseRate } from "../src/net/rate.ts";

describe("rates", () => {
  test("tc-style bits and byte units", () => {
    expect(parseRate("5mbit")).toBe(625_000);
    expect(parseRate("1gbit")).toBe(125_000_000);
    expect(parseRate("10MB")).toBe(10_000_000);
    expect(parseRate("8MiB/s")).toBe(8 * 1024 * 1024);
    expect(() => parseRate("fast")).toThrow("cannot read rate");
    expect(() => parseRate("5 parsecs")).toThrow("cannot read rate");
  });
});

import { BULK_CHUNK, BulkReadLog, coalesceBatch } from "../src/phases/coalesce.ts";
import type { DeltaRecord } from "../src/disk/recording/delta-log.ts";

describe("coalescing rules", () => {
  const rec = (seq: number, offset: number, length: number, end: number): DeltaRecord => ({ seq: BigInt(seq), kind: 1, offset, length, data: new Uint8Array(length), end });
  test("a record is carried by the bulk copy only if every chunk it touches was read after it", () => {
    const log = new BulkReadLog();
    log.noteRead(0, 1000); // chunk 0 read when the log was 1000 bytes long
    log.noteRead(BULK_CHUNK, 500); // chunk 1 read earlier, at 500
    expect(log.carries(rec(1, 4096, 4096, 900))).toBe(true); // appended before chunk 0 was read
    // The last record in the log when the chunk was read: its image write may have been still to come.
    expect(log.carries(rec(7, 4096, 4096, 1000))).toBe(false);
    expect(log.carries(rec(2, 4096, 4096, 1100))).toBe(false); // appended after: must be sent
    expect(log.carries(rec(3, BULK_CHUNK - 2048, 4096, 900))).toBe(false); // spans into chunk 1, read at 500
    expect(log.carries(rec(4, 2 * BULK_CHUNK, 4096, 10))).toBe(false); // chunk never read: sent
    // A resume re-reads part of chunk 0 later: only what preceded the first read is carried.
    log.noteRead(BULK_CHUNK / 2, 5000);
    expect(log.carries(rec(5, 4096, 4096, 1100))).toBe(false);
    expect(log.carries(rec(6, 4096, 4096, 900))).toBe(true);
  });
  test("only exact repeats are coalesced, and the later one is kept", () => {
    const out = coalesceBatch([rec(1, 0, 4096, 0), rec(2, 2048, 4096, 0), rec(3, 0, 4096, 0), rec(4, 0, 8192, 0)]);
    expect(out.map((r) => Number(r.seq))).toEqual([2, 3, 4]);
  });
});
