// The wire protocol between `wanmig source` and `wanmig dest`, over any byte stream
// (TCP, TLS, the stdio of `ssh HOST wanmig dest --stdio`).
//
//   source                                                   dest
//     | HELLO     {version, nonce, name, size, blockSize,       |
//     |            recording: which delta log this run ships}  |
//     |------------------------------------------------------->|
//     | WELCOME   {version, nonce, proof = HMAC(secret,          |  dest proves first,
//     |            "dest" | source nonce | dest nonce)}          |  over both nonces
//     |<-------------------------------------------------------|
//     | AUTH      {proof = HMAC(secret, "source" | dest nonce |  |  (with SSH, proofs are
//     |            source nonce)}                              |   empty: SSH authenticated)
//     |------------------------------------------------------->|
//     | READY     {bulkOffset, nextSeq, base, [streams,      |  0/first on a new run
//     |            session]}: where to resume                  |
//     | BASE_HASHES offset hash* (if base: per block, per chunk)|  the image here has
//     |<-------------------------------------------------------|  content: send only
//     |                                                        |  blocks that differ
//     | --streams N: N-1 more connections, each HELLO {join:   |  (lanes.ts) each proves
//     |   {session, lane}} WELCOME AUTH, answered JOINED {lane} |  itself, keys of its own;
//     |   from here on the source's frames go in runs, a run   |  the receiver follows
//     |   per lane, each ended by NEXT {lane} where it leaves   |  NEXT: one ordered stream
//     | BULK offset [zstd] data | ZERO offset length   ...      |  bulk copy, in order
//     | BULK_END  {size}                                        |
//     | DELTA seq kind offset length data              ...      |  deltas, in seq order;
//     |                                                        |  or a copy pass: COPY ..
//     |                                                        |  COPY_END, image content
//     |                                                        |  standing for records <= seq
//     |------------------------------------------------------->|
//     | ACK bulkOffset seq copied (applied up to here, and     |  after bursts
//     |     frames of the open copy pass)                      |
//     |<-------------------------------------------------------|
//     | REDIRECT  {tunnel: mode, iface, vni, table, oldIp,      |  optional, before the
//     |            sourceAddr, destAddr}                       |  VM pauses: dest sets
//     |<------------------------------------ REDIRECT_READY {} |  up its tunnel end
//     | BARRIER   {lastSeq, size, digest}   after the fence     |
//     | [CHECKSUM {digest}]  when BARRIER's digest was empty:   |  both sides finish the
//     |                      the source hashed meanwhile        |  digest at the same time
//     |------------------------------------------------------->|
//     | DONE      {digest} (verified; dest now serves the VM)   |
//     |<-------------------------------------------------------|
//   Either side may send ERROR {message} and close.
//
// Recovery of an interrupted hand-off (a source or destination killed after the fence):
// the source, fenced, connects again with the same recording. READY's `verified` carries
// the digest if the destination already verified (and released) it: the source checks it
// against its own image and records the move. Otherwise, if the destination has the whole
// bulk copy, the hand-off is finished as usual from READY's position. If it cannot be:
//     | ROLLBACK  {reason}                                      |  the destination records,
//     |------------------------------------------------------->|  durably, that it never
//     |<------------------------------------------- ROLLED_BACK |  releases this recording
//   and only then does the source lift its fence.
//
// Resume: if the stream breaks before the fence, the source connects again and repeats
// HELLO/AUTH; READY then says how far the destination got (bulk offset, or the size once
// BULK_END arrived; the next delta sequence it needs), and the source goes on from there.
// Positions only mean something against one delta log: a HELLO naming another recording
// (the source was restarted and the serve's log with it) starts over from offset 0, with
// what the image already holds used as a base.
//
// Base: when the destination's image already has content (a template, an older copy, an
// interrupted run), READY says base=true and the destination streams BASE_HASHES, one per
// bulk chunk (4 MiB, aligned) from the resume offset on: a 16-byte truncated SHA-256 per
// block. The source sends only blocks whose hash differs, and ZERO for all-zero blocks
// the base does not already have as zeros.
//
// Frame: u32 magic "WMG1" | u8 type | u8 flags | u16 reserved (0) | u32 payload length |
// payload | u32 CRC-32 of header and payload. Big-endian. Control messages carry JSON;
// data messages (BULK, ZERO, DELTA, ACK) a fixed binary header and the data.
//
// Versioning: HELLO carries PROTOCOL_VERSION; dest refuses another major version with
// ERROR before anything else is said. 2: region digest, base hashes, the recording named
// in HELLO; 3: REDIRECT; 4: recovery (READY.verified, ROLLBACK, ROLLED_BACK); 5: the
// digest's pieces are 4 KiB (another digest value for the same image); 6: copy passes
// (DELTA ops COPY and COPY_END, ACK's `copied`); 7: BULK pieces of the connection's zstd
// stream (Flag.ZSTD_STREAM), ACK's `syncMs`, the digest's pieces hashed with XXH3
// (region-digest.ts); 8: every frame after AUTH sealed when a secret is used (seal.ts);
// 9: HELLO's `disks` (a VM's several disks as one space, image-set.ts); 10: several
// connections as one channel (HELLO's `streams` and `join`, READY's `streams` and `session`,
// JOINED, NEXT; lanes.ts); 11: the image digest over groups of regions that hold data
// (another digest value for the same image; region-digest.ts).
// New message types need a new version; unknown
// types, oversize lengths and bad checksums are errors, never guesses.

import { ProtocolError } from "./errors.ts";
import { BufferPool } from "../util/buffer-pool.ts";
import { ByteQueue } from "../util/byte-queue.ts";

export const PROTOCOL_VERSION = 11;
export const FRAME_MAGIC = 0x574d4731; // "WMG1"
export const FRAME_HEADER_LEN = 12;
export const FRAME_TRAILER_LEN = 4;
/** Larger than any message we send (32 MiB delta + header); anything bigger is hostile. */
export const MAX_PAYLOAD = 40 * 1024 * 1024;

export const MsgType = {
  HELLO: 1,
  WELCOME: 2,
  AUTH: 3,
  READY: 4,
  BULK: 10,
  ZERO: 11,
  DELTA: 12,
  ACK: 13,
  BULK_END: 14,
  BASE_HASHES: 15,
  BARRIER: 20,
  DONE: 21,
  CHECKSUM: 22,
  REDIRECT: 23,
  REDIRECT_READY: 24,
  ROLLBACK: 25,
  ROLLED_BACK: 26,
  JOINED: 27,
  NEXT: 28,
  ERROR: 30,
} as const;
export type MsgTypeValue = (typeof MsgType)[keyof typeof MsgType];

/**
 * ZSTD: the payload is one zstd frame of its own. ZSTD_STREAM (BULK only): the payload is
 * the next piece of this connection's zstd stream: it decodes only after every earlier
 * piece, in order, and may refer to their data (zstd-stream.ts).
 */
export const Flag = { ZSTD: 1, ZSTD_STREAM: 2 } as const;
/**
 * DATA and ZERO replay one record of the delta log. COPY and COPY_END carry the image's
 * current content over a range instead, in a copy pass that stands for every record up
 * to its `seq` (copy-pass.ts says why that is the same result): all of a pass's frames
 * carry that seq, and only COPY_END advances the destination's next sequence, so a
 * stream broken mid-pass resumes from before the pass.
 */
export const DeltaOp = { DATA: 1, ZERO: 2, COPY: 3, COPY_END: 4 } as const;
export const isCopyOp = (op: number): boolean => op === DeltaOp.COPY || op === DeltaOp.COPY_END;

export interface Hello {
  type: typeof MsgType.HELLO;
  version: number;
  nonce: string; // hex
  name: string;
  size: number;
  blockSize: number;
  /** The delta log this run ships (its file name at the source): resume positions refer to it. */
  recording: string;
  /** A VM with several disks: their sizes, in order (they add up to `size`; image-set.ts). Absent: one disk. */
  disks?: number[];
  /** The connections (this one included) the source would use as one channel (--streams); absent: one. */
  streams?: number;
  /** This connection joins the channel READY opened: its session, and its lane number (1 on). */
  join?: { session: string; lane: number };
}

/** The sizes of the disks a HELLO (or what a destination kept of one) describes. */
export function diskSizes(h: Pick<Hello, "size" | "disks">): number[] {
  return h.disks ?? [h.size];
}

/** Two descriptions of the same VM's disks. */
export function sameDisks(a: Pick<Hello, "size" | "disks">, b: Pick<Hello, "size" | "disks">): boolean {
  const x = diskSizes(a);
  const y = diskSizes(b);
  return a.size === b.size && x.length === y.length && x.every((s, i) => s === y[i]);
}
export interface Welcome {
  type: typeof MsgType.WELCOME;
  version: number;
  nonce: string;
  proof: string;
}
export interface Auth {
  type: typeof MsgType.AUTH;
  proof: string;
}
export interface Ready {
  type: typeof MsgType.READY;
  bulkOffset: number;
  nextSeq: string; // decimal: sequence numbers are u64
  /** The destination's image has content: BASE_HASHES follow, and zero blocks must be sent. */
  base: boolean;
  /** Set when the destination verified this recording already (DONE was sent): its digest. */
  verified?: string;
  /** Connections the destination takes as this channel's lanes (HELLO's `streams` or fewer), and the session they join. */
  streams?: number;
  session?: string;
}
/** A connection joined the channel as lane `lane` (the answer to a HELLO with `join`, after AUTH). */
export interface Joined {
  type: typeof MsgType.JOINED;
  lane: number;
}
/** The frames after this one continue on lane `lane` (lanes.ts): the order across a channel's connections. */
export interface Next {
  type: typeof MsgType.NEXT;
  lane: number;
}
export interface Bulk {
  type: typeof MsgType.BULK;
  offset: number;
  /** Length of the block once decompressed. */
  length: number;
  compressed: boolean;
  /** A piece of the connection's zstd stream (Flag.ZSTD_STREAM), not a frame of its own; `compressed` is set too. */
  streamed?: boolean;
  data: Uint8Array;
}
export interface Zero {
  type: typeof MsgType.ZERO;
  offset: number;
  length: number;
}
export interface Delta {
  type: typeof MsgType.DELTA;
  seq: bigint;
  op: (typeof DeltaOp)[keyof typeof DeltaOp];
  offset: number;
  length: number;
  compressed: boolean;
  data: Uint8Array;
}
export interface Ack {
  type: typeof MsgType.ACK;
  bulkOffset: number;
  /** Every delta below this sequence number is applied. */
  nextSeq: bigint;
  /** Frames of the open copy pass (the first one past nextSeq) applied so far. */
  copied: number;
  /**
   * How long the destination's last background sync of the image took, ms: what its sync
   * at the barrier will cost again (the source's hand-off estimate counts it).
   */
  syncMs: number;
}
/** Every block of the bulk copy has been sent (zero blocks are never sent, so say it). */
export interface BulkEnd {
  type: typeof MsgType.BULK_END;
  size: number;
}
/** Hashes of the destination's blocks in one bulk chunk, starting at `offset`. */
export interface BaseHashes {
  type: typeof MsgType.BASE_HASHES;
  offset: number;
  /** BASE_HASH_LEN bytes per block. */
  hashes: Uint8Array;
}
export const BASE_HASH_LEN = 16;
export interface Barrier {
  type: typeof MsgType.BARRIER;
  lastSeq: string;
  size: number;
  /** The image digest (region-digest.ts: SHA-256 over each 1 MiB region's SHA-256), or "" if a CHECKSUM follows. */
  digest: string;
}
/** The source's image digest, sent after a BARRIER whose digest is empty (both sides hash at once). */
export interface Checksum {
  type: typeof MsgType.CHECKSUM;
  digest: string;
}
/** The source asks the destination to set up its end of the network redirect (src/redirect/). */
export interface Redirect {
  type: typeof MsgType.REDIRECT;
  mode: "vxlan" | "ipip" | "gre";
  iface: string;
  vni: number;
  table: number;
  oldIp: string;
  /** The tunnel's outer endpoints: the source host's and the destination host's addresses. */
  sourceAddr: string;
  destAddr: string;
  /** The VM's new address ("" if not given): the destination finds the VM's interface by it. */
  newIp: string;
  /** Tear the tunnel down after this long without a packet. */
  idleMs: number;
}
export interface RedirectReady {
  type: typeof MsgType.REDIRECT_READY;
  iface: string;
}
export interface Done {
  type: typeof MsgType.DONE;
  digest: string;
}
/** The source gives the migration up during a hand-off's recovery; the destination must never release it. */
export interface Rollback {
  type: typeof MsgType.ROLLBACK;
  reason: string;
}
/** The destination has recorded, durably, that it never releases this recording. */
export interface RolledBack {
  type: typeof MsgType.ROLLED_BACK;
  recording: string;
}
export interface ErrorMsg {
  type: typeof MsgType.ERROR;
  message: string;
}

export type Message = Hello | Welcome | Auth | Ready | Joined | Next | Bulk | Zero | Delta | Ack | BulkEnd | BaseHashes | Barrier | Checksum | Redirect | RedirectReady | Done | Rollback | RolledBack | ErrorMsg;

/** Named constructors: the only way messages are made, so every field is always set. */
export const msg = {
  hello: (p: Omit<Hello, "type" | "version">): Hello => ({ type: MsgType.HELLO, version: PROTOCOL_VERSION, ...p }),
  welcome: (p: Omit<Welcome, "type" | "version">): Welcome => ({ type: MsgType.WELCOME, version: PROTOCOL_VERSION, ...p }),
  auth: (proof: string): Auth => ({ type: MsgType.AUTH, proof }),
  ready: (bulkOffset: number, nextSeq: bigint, base: boolean, verified?: string, lanes?: { streams: number; session: string }): Ready => ({
    type: MsgType.READY,
    bulkOffset,
    nextSeq: nextSeq.toString(),
    base,
    ...(verified ? { verified } : {}),
    ...(lanes ?? {}),
  }),
  joined: (lane: number): Joined => ({ type: MsgType.JOINED, lane }),
  next: (lane: number): Next => ({ type: MsgType.NEXT, lane }),
  bulk: (offset: number, length: number, data: Uint8Array, compressed = false, streamed = false): Bulk => ({ type: MsgType.BULK, offset, length, data, compressed: compressed || streamed, ...(streamed ? { streamed } : {}) }),
  zero: (offset: number, length: number): Zero => ({ type: MsgType.ZERO, offset, length }),
  delta: (p: Omit<Delta, "type">): Delta => ({ type: MsgType.DELTA, ...p }),
  ack: (bulkOffset: number, nextSeq: bigint, copied = 0, syncMs = 0): Ack => ({ type: MsgType.ACK, bulkOffset, nextSeq, copied, syncMs }),
  bulkEnd: (size: number): BulkEnd => ({ type: MsgType.BULK_END, size }),
  baseHashes: (offset: number, hashes: Uint8Array): BaseHashes => ({ type: MsgType.BASE_HASHES, offset, hashes }),
  barrier: (lastSeq: bigint, size: number, digest: string): Barrier => ({ type: MsgType.BARRIER, lastSeq: lastSeq.toString(), size, digest }),
  checksum: (digest: string): Checksum => ({ type: MsgType.CHECKSUM, digest }),
  done: (digest: string): Done => ({ type: MsgType.DONE, digest }),
  redirect: (p: Omit<Redirect, "type">): Redirect => ({ type: MsgType.REDIRECT, ...p }),
  redirectReady: (iface: string): RedirectReady => ({ type: MsgType.REDIRECT_READY, iface }),
  rollback: (reason: string): Rollback => ({ type: MsgType.ROLLBACK, reason }),
  rolledBack: (recording: string): RolledBack => ({ type: MsgType.ROLLED_BACK, recording }),
  error: (message: string): ErrorMsg => ({ type: MsgType.ERROR, message }),
};

const JSON_TYPES = new Set<number>([MsgType.HELLO, MsgType.WELCOME, MsgType.AUTH, MsgType.READY, MsgType.JOINED, MsgType.BULK_END, MsgType.BARRIER, MsgType.CHECKSUM, MsgType.REDIRECT, MsgType.REDIRECT_READY, MsgType.DONE, MsgType.ROLLBACK, MsgType.ROLLED_BACK, MsgType.ERROR]);

export function typeName(t: number): string {
  for (const [k, v] of Object.entries(MsgType)) if (v === t) return k;
  return `unknown(${t})`;
}

// ---- encode ------------------------------------------------------------------------

function putU64(b: Buffer, off: number, v: number | bigint): void {
  b.writeBigUInt64BE(BigInt(v), off);
}

/** BULK and ZERO start alike: u64 offset, u32 length. */
function rangeHeader(offset: number, length: number): Buffer {
  const h = Buffer.alloc(12);
  putU64(h, 0, offset);
  h.writeUInt32BE(length, 8);
  return h;
}

/** Payload and flags of one message. */
function encodePayload(m: Message): { flags: number; parts: Uint8Array[] } {
  if (JSON_TYPES.has(m.type)) {
    const { type: _t, ...rest } = m as Message & Record<string, unknown>;
    return { flags: 0, parts: [Buffer.from(JSON.stringify(rest), "utf8")] };
  }
  switch (m.type) {
    case MsgType.BULK:
      return { flags: m.streamed ? Flag.ZSTD_STREAM : m.compressed ? Flag.ZSTD : 0, parts: [rangeHeader(m.offset, m.length), m.data] };
    case MsgType.ZERO:
      return { flags: 0, parts: [rangeHeader(m.offset, m.length)] };
    case MsgType.DELTA: {
      const h = Buffer.alloc(21);
      putU64(h, 0, m.seq);
      h.writeUInt8(m.op, 8);
      putU64(h, 9, m.offset);
      h.writeUInt32BE(m.length, 17);
      return { flags: m.compressed ? Flag.ZSTD : 0, parts: [h, m.data] };
    }
    case MsgType.BASE_HASHES: {
      const h = Buffer.alloc(8);
      putU64(h, 0, m.offset);
      return { flags: 0, parts: [h, m.hashes] };
    }
    case MsgType.NEXT: {
      const h = Buffer.alloc(2);
      h.writeUInt16BE(m.lane, 0);
      return { flags: 0, parts: [h] };
    }
    case MsgType.ACK: {
      const h = Buffer.alloc(28);
      putU64(h, 0, m.bulkOffset);
      putU64(h, 8, m.nextSeq);
      putU64(h, 16, m.copied);
      h.writeUInt32BE(Math.min(0xffffffff, Math.round(m.syncMs)), 24);
      return { flags: 0, parts: [h] };
    }
  }
  throw new ProtocolError(`cannot encode message type ${(m as Message).type}`);
}

/** One frame, ready to write, in a buffer from `alloc` (a sender reusing its frame buffers; a new one by default). */
export function encodeFrame(m: Message, alloc: (n: number) => Buffer = Buffer.allocUnsafe): Buffer {
  const { flags, parts } = encodePayload(m);
  const length = parts.reduce((n, p) => n + p.length, 0);
  if (length > MAX_PAYLOAD) throw new ProtocolError(`${typeName(m.type)} payload of ${length} bytes exceeds ${MAX_PAYLOAD}`);
  const out = alloc(FRAME_HEADER_LEN + length + FRAME_TRAILER_LEN);
  out.writeUInt32BE(FRAME_MAGIC, 0);
  out.writeUInt8(m.type, 4);
  out.writeUInt8(flags, 5);
  out.writeUInt16BE(0, 6);
  out.writeUInt32BE(length, 8);
  let at = FRAME_HEADER_LEN;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  out.writeUInt32BE(Bun.hash.crc32(out.subarray(0, at)) >>> 0, at);
  return out;
}

// ---- decode ------------------------------------------------------------------------

function getU64(b: Buffer, off: number): number {
  const v = b.readBigUInt64BE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError(`offset ${v} is out of range`);
  return Number(v);
}

function need(b: Buffer, n: number, what: string): void {
  if (b.length < n) throw new ProtocolError(`${what} payload is ${b.length} bytes, needs at least ${n}`);
}

function decodeJson<T extends Message>(type: T["type"], payload: Buffer, check: (v: Record<string, unknown>) => boolean): T {
  let v: unknown;
  try {
    v = JSON.parse(payload.toString("utf8"));
  } catch (cause) {
    throw new ProtocolError(`${typeName(type)} payload is not JSON`, { cause });
  }
  if (!v || typeof v !== "object" || Array.isArray(v) || !check(v as Record<string, unknown>))
    throw new ProtocolError(`${typeName(type)} payload lacks required fields`);
  return { ...(v as object), type } as T;
}

const isStr = (x: unknown) => typeof x === "string";
const isNum = (x: unknown) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
/** Absent, or at most 64 disks of a positive size each, adding up to the whole. */
const validDisks = (x: unknown, size: unknown) =>
  x === undefined || (Array.isArray(x) && x.length >= 1 && x.length <= 64 && x.every((d) => isNum(d) && d > 0) && x.reduce((a: number, d: number) => a + d, 0) === size);

/** More connections than this in one channel would buy nothing but memory (lanes.ts). */
export const MAX_STREAMS = 16;
const validStreams = (x: unknown) => x === undefined || (isNum(x) && (x as number) >= 1 && (x as number) <= MAX_STREAMS);
const validJoin = (x: unknown) => {
  if (x === undefined) return true;
  const j = x as Record<string, unknown>;
  return !!j && typeof j === "object" && isStr(j.session) && isNum(j.lane) && (j.lane as number) >= 1 && (j.lane as number) < MAX_STREAMS;
};

export function decodePayload(type: number, flags: number, payload: Buffer): Message {
  const streamed = (flags & Flag.ZSTD_STREAM) !== 0;
  const compressed = (flags & Flag.ZSTD) !== 0 || streamed;
  if (flags & ~(Flag.ZSTD | Flag.ZSTD_STREAM) || (streamed && flags & Flag.ZSTD)) throw new ProtocolError(`unknown flags 0x${flags.toString(16)} on ${typeName(type)}`);
  if (streamed && type !== MsgType.BULK) throw new ProtocolError(`a ${typeName(type)} cannot be a piece of the zstd stream`);
  switch (type) {
    case MsgType.HELLO:
      return decodeJson<Hello>(
        type,
        payload,
        (v) => isNum(v.version) && isStr(v.nonce) && isStr(v.name) && isNum(v.size) && isNum(v.blockSize) && isStr(v.recording) && validDisks(v.disks, v.size) && validStreams(v.streams) && validJoin(v.join),
      );
    case MsgType.WELCOME:
      return decodeJson<Welcome>(type, payload, (v) => isNum(v.version) && isStr(v.nonce) && isStr(v.proof));
    case MsgType.AUTH:
      return decodeJson<Auth>(type, payload, (v) => isStr(v.proof));
    case MsgType.READY:
      return decodeJson<Ready>(
        type,
        payload,
        (v) =>
          isNum(v.bulkOffset) &&
          isStr(v.nextSeq) &&
          /^\d+$/.test(v.nextSeq as string) &&
          typeof v.base === "boolean" &&
          (v.verified === undefined || isStr(v.verified)) &&
          validStreams(v.streams) &&
          (v.session === undefined || isStr(v.session)),
      );
    case MsgType.JOINED:
      return decodeJson<Joined>(type, payload, (v) => isNum(v.lane) && (v.lane as number) >= 1 && (v.lane as number) < MAX_STREAMS);
    case MsgType.NEXT:
      need(payload, 2, "NEXT");
      return { type, lane: payload.readUInt16BE(0) };
    case MsgType.BULK_END:
      return decodeJson<BulkEnd>(type, payload, (v) => isNum(v.size));
    case MsgType.BARRIER:
      return decodeJson<Barrier>(type, payload, (v) => isStr(v.lastSeq) && isNum(v.size) && isStr(v.digest));
    case MsgType.CHECKSUM:
      return decodeJson<Checksum>(type, payload, (v) => isStr(v.digest));
    case MsgType.REDIRECT:
      return decodeJson<Redirect>(
        type,
        payload,
        (v) => ["vxlan", "ipip", "gre"].includes(v.mode as string) && isStr(v.iface) && /^[\w.-]{1,15}$/.test(v.iface as string) && isNum(v.vni) && isNum(v.table) && isStr(v.oldIp) && isStr(v.sourceAddr) && isStr(v.destAddr) && isStr(v.newIp) && isNum(v.idleMs),
      );
    case MsgType.REDIRECT_READY:
      return decodeJson<RedirectReady>(type, payload, (v) => isStr(v.iface));
    case MsgType.DONE:
      return decodeJson<Done>(type, payload, (v) => isStr(v.digest));
    case MsgType.ROLLBACK:
      return decodeJson<Rollback>(type, payload, (v) => isStr(v.reason));
    case MsgType.ROLLED_BACK:
      return decodeJson<RolledBack>(type, payload, (v) => isStr(v.recording));
    case MsgType.ERROR:
      return decodeJson<ErrorMsg>(type, payload, (v) => isStr(v.message));
    case MsgType.BULK: {
      need(payload, 12, "BULK");
      const length = payload.readUInt32BE(8);
      const data = payload.subarray(12);
      if (!compressed && data.length !== length) throw new ProtocolError(`BULK says ${length} bytes but carries ${data.length}`);
      return { type, offset: getU64(payload, 0), length, compressed, ...(streamed ? { streamed } : {}), data };
    }
    case MsgType.ZERO:
      need(payload, 12, "ZERO");
      return { type, offset: getU64(payload, 0), length: payload.readUInt32BE(8) };
    case MsgType.DELTA: {
      need(payload, 21, "DELTA");
      const op = payload.readUInt8(8);
      if (op !== DeltaOp.DATA && op !== DeltaOp.ZERO && !isCopyOp(op)) throw new ProtocolError(`DELTA with unknown op ${op}`);
      const length = payload.readUInt32BE(17);
      const data = payload.subarray(21);
      if (op !== DeltaOp.ZERO && !compressed && data.length !== length) throw new ProtocolError(`DELTA says ${length} bytes but carries ${data.length}`);
      return { type, seq: payload.readBigUInt64BE(0), op: op as Delta["op"], offset: getU64(payload, 9), length, compressed, data };
    }
    case MsgType.BASE_HASHES: {
      need(payload, 8, "BASE_HASHES");
      const hashes = payload.subarray(8);
      if (hashes.length % BASE_HASH_LEN) throw new ProtocolError(`BASE_HASHES carries ${hashes.length} bytes, not a whole number of hashes`);
      return { type, offset: getU64(payload, 0), hashes };
    }
    case MsgType.ACK:
      need(payload, 28, "ACK");
      return { type, bulkOffset: getU64(payload, 0), nextSeq: payload.readBigUInt64BE(8), copied: getU64(payload, 16), syncMs: payload.readUInt32BE(24) };
  }
  throw new ProtocolError(`unknown message type ${type}`);
}

/** A bulk frame (4 MiB of data and its headers) fits one frame buffer. */
export const FRAME_BUFFER_BYTES = 4 * 1024 * 1024 + 64 * 1024;
/** Frames under this (control messages, small deltas) are not worth a pooled buffer. */
export const MIN_POOLED_FRAME = 64 * 1024;

/**
 * Turns a byte stream into messages. Feed it chunks; it returns every complete message.
 * Any framing error is fatal for the stream: the caller reports it and closes.
 */
/** Checks a frame header; returns its payload length. */
function checkHeader(head: Buffer): number {
  const magic = head.readUInt32BE(0);
  if (magic !== FRAME_MAGIC) throw new ProtocolError(`bad frame magic 0x${magic.toString(16)}: not a wanmig peer, or the stream lost step`);
  const length = head.readUInt32BE(8);
  if (length > MAX_PAYLOAD) throw new ProtocolError(`frame of ${length} bytes exceeds the ${MAX_PAYLOAD}-byte limit`);
  if (head.readUInt16BE(6) !== 0) throw new ProtocolError("reserved frame bits are set");
  return length;
}

export class FrameDecoder {
  private readonly queue = new ByteQueue();
  private readonly header = Buffer.alloc(FRAME_HEADER_LEN);
  /**
   * Frame buffers: four kept, more made while the channel's inbox holds more frames. A
   * channel's lanes share their first lane's (lanes.ts): its frames are recycled through the
   * channel whichever lane brought them, and a pool per lane kept four more each.
   */
  constructor(readonly frames = new BufferPool({ minBytes: MIN_POOLED_FRAME, allocBytes: FRAME_BUFFER_BYTES, keep: 4 })) {}

  /** Bytes received and not yet part of a whole frame. */
  get buffered(): number {
    return this.queue.length;
  }

  push(chunk: Uint8Array): Message[] {
    const q = this.queue;
    q.push(chunk);
    const out: Message[] = [];
    for (;;) {
      if (q.length < FRAME_HEADER_LEN) break;
      const head = this.header;
      q.peekInto(head);
      const total = FRAME_HEADER_LEN + checkHeader(head) + FRAME_TRAILER_LEN;
      if (q.length < total) break;
      // Copied out: the chunks may be socket buffers that are reused after this callback.
      const frame = this.frames.take(total);
      q.takeInto(frame);
      out.push(this.decodeWhole(frame));
    }
    return out;
  }

  /** A buffer for a whole frame from this decoder's pool (recycle() gives it back). */
  frameBuffer(n: number): Buffer {
    return this.frames.take(n);
  }

  /** Decodes one whole frame (an opened sealed record, seal.ts); its data are views of it. */
  decodeWhole(frame: Buffer): Message {
    if (frame.length < FRAME_HEADER_LEN + FRAME_TRAILER_LEN) throw new ProtocolError(`a frame of ${frame.length} bytes is shorter than its header`);
    const total = FRAME_HEADER_LEN + checkHeader(frame) + FRAME_TRAILER_LEN;
    if (total !== frame.length) throw new ProtocolError(`a frame says ${total} bytes but carries ${frame.length}`);
    const crc = frame.readUInt32BE(total - FRAME_TRAILER_LEN);
    if (crc !== Bun.hash.crc32(frame.subarray(0, total - FRAME_TRAILER_LEN)) >>> 0) throw new ProtocolError(`checksum mismatch on a ${typeName(frame.readUInt8(4))} frame`);
    return decodePayload(frame.readUInt8(4), frame.readUInt8(5), frame.subarray(FRAME_HEADER_LEN, total - FRAME_TRAILER_LEN));
  }

  /** The receiver is done with a message's data (applied to the image, nothing keeps a view of it): its frame buffer takes a later frame. */
  recycle(data: Uint8Array): void {
    this.frames.release(data);
  }
}
