// The delta log: every write completed in record mode, in the order it reached the image.
//
// File layout (all integers little-endian; the file is local, never sent as is):
//
//   file header, 64 bytes
//     0   8  magic "WMDELTA1"
//     8   4  format version (1)
//    12   4  header length (64)
//    16   8  sequence number of the first record
//    24   8  image size in bytes when recording started
//    32   8  creation time, ms since the epoch
//    40  20  reserved, zero
//    60   4  CRC-32 of bytes 0..60
//
//   records, back to back, each a 32-byte header and (for DATA) `length` bytes of data
//     0   4  magic "WMDR"
//     4   1  kind: 1 DATA (bytes follow), 2 ZERO (the range now reads as zeros), 3 AHEAD (a
//              write past the bulk copy's cursor: no bytes follow, the bulk copy reads the
//              range after it, see recording.ts), 4 WRITTEN (a write behind the cursor,
//              logged without its bytes: the source sends the image's content over the
//              range when it ships the record, see recording.ts)
//     5   3  reserved, zero
//     8   8  sequence number: the first record's, then +1 each, no gaps
//    16   8  offset in the image
//    24   4  length in bytes
//    28   4  CRC-32 of bytes 0..28 followed by the data
//
// Why this shape: a reader can tail the file while `serve` appends to it. Each record is
// written with one positional writev, so a reader sees either the whole record or a
// short/garbled tail that it must re-read later; it never needs to ask the writer.
// A tail that is still garbled once the writer has stopped is corruption.
// TRIM is recorded as ZERO because our TRIM really zeros (we punch a hole), and replay
// must reproduce the image byte for byte.

import { closeSync, fstatSync, ftruncateSync, openSync, readSync, writeSync, writevSync } from "node:fs";
import { crc32Payload, type Payload, payloadLength, piecesOf } from "../block/payload.ts";
import { DeltaLogError } from "../../errors.ts";

const FILE_MAGIC = Buffer.from("WMDELTA1", "latin1");
const RECORD_MAGIC = 0x52444d57; // "WMDR" read as little-endian u32
export const FILE_HEADER_LEN = 64;
export const RECORD_HEADER_LEN = 32;
const FORMAT_VERSION = 1;
/** A record can be no larger than one NBD request (32 MiB); anything larger is corruption. */
const RECORD_MAX_DATA = 32 * 1024 * 1024;

export const DeltaKind = { DATA: 1, ZERO: 2, AHEAD: 3, WRITTEN: 4 } as const;
export type DeltaKindValue = (typeof DeltaKind)[keyof typeof DeltaKind];

function knownKind(kind: number): kind is DeltaKindValue {
  return kind >= DeltaKind.DATA && kind <= DeltaKind.WRITTEN;
}

/**
 * What shipping a record costs, in bytes: its frame (about a header) and the bytes it
 * stands for, carried in the log (DATA) or read from the image when it is sent (WRITTEN).
 * The queue the convergence controller and the throttles watch is counted in these, not
 * in the log file's bytes: a WRITTEN record is 32 bytes of log for up to 32 MiB to send.
 */
export function shipCost(kind: number, length: number): number {
  return RECORD_HEADER_LEN + (kind === DeltaKind.DATA || kind === DeltaKind.WRITTEN ? length : 0);
}

export interface DeltaLogHeader {
  firstSeq: bigint;
  imageSize: number;
  createdMs: number;
}

export interface DeltaRecord {
  seq: bigint;
  kind: DeltaKindValue;
  offset: number;
  length: number;
  /** The written bytes for DATA; empty for ZERO. */
  data: Uint8Array;
  /** File offset just past this record: where a reader resumes. */
  end: number;
}

function encodeFileHeader(h: DeltaLogHeader): Buffer {
  const b = Buffer.alloc(FILE_HEADER_LEN);
  FILE_MAGIC.copy(b, 0);
  b.writeUInt32LE(FORMAT_VERSION, 8);
  b.writeUInt32LE(FILE_HEADER_LEN, 12);
  b.writeBigUInt64LE(h.firstSeq, 16);
  b.writeBigUInt64LE(BigInt(h.imageSize), 24);
  b.writeBigUInt64LE(BigInt(h.createdMs), 32);
  b.writeUInt32LE(Bun.hash.crc32(b.subarray(0, 60)) >>> 0, 60);
  return b;
}

function decodeFileHeader(b: Buffer, path: string): DeltaLogHeader {
  if (!b.subarray(0, 8).equals(FILE_MAGIC)) throw new DeltaLogError(`${path} is not a wanmig delta log (bad magic)`);
  const version = b.readUInt32LE(8);
  if (version !== FORMAT_VERSION) throw new DeltaLogError(`${path}: delta log version ${version} is not supported (want ${FORMAT_VERSION})`);
  if (b.readUInt32LE(60) !== Bun.hash.crc32(b.subarray(0, 60)) >>> 0) throw new DeltaLogError(`${path}: delta log header checksum mismatch`);
  return {
    firstSeq: b.readBigUInt64LE(16),
    imageSize: Number(b.readBigUInt64LE(24)),
    createdMs: Number(b.readBigUInt64LE(32)),
  };
}

const EMPTY = new Uint8Array(0);

/** Header fields 0..28; the checksum at 28 is written by the caller. u64s as two u32s: no BigInt on the hot path. */
function encodeRecordHeader(h: Buffer, kind: number, seq: bigint, offset: number, length: number): void {
  h.writeUInt32LE(RECORD_MAGIC, 0);
  h.writeUInt32LE(kind, 4); // kind byte plus three reserved zero bytes
  h.writeBigUInt64LE(seq, 8);
  h.writeUInt32LE(offset % 0x100000000, 16);
  h.writeUInt32LE(Math.floor(offset / 0x100000000), 20);
  h.writeUInt32LE(length, 24);
}

function recordChecksum(header: Buffer, data: Payload): number {
  return crc32Payload(data, Bun.hash.crc32(header.subarray(0, 28))) >>> 0;
}

/** Appends records. Used only by `serve`'s recording decorator, synchronously. */
export class DeltaLogWriter {
  private fd: number;
  private position = FILE_HEADER_LEN;
  private nextSeq: bigint;
  private readonly stage = Buffer.allocUnsafe(RECORD_HEADER_LEN + 64 * 1024);
  records = 0;
  bytes = 0;
  /** The records' ship cost, all told (shipCost); equal to `bytes` for a log of DATA and ZERO. */
  shipBytes = 0;

  constructor(
    readonly path: string,
    readonly header: DeltaLogHeader,
    /** Go on appending to a log a killed serve left (see `continueLog`), instead of a new file. */
    resume?: { fd: number; end: LogEnd },
  ) {
    if (resume) {
      this.fd = resume.fd;
      this.position = resume.end.position;
      this.nextSeq = resume.end.nextSeq;
      this.records = Number(resume.end.nextSeq - header.firstSeq);
      this.bytes = resume.end.position - FILE_HEADER_LEN;
      this.shipBytes = resume.end.shipBytes;
      return;
    }
    // "wx": never reuse a file a reader might still be following.
    this.fd = openSync(path, "wx", 0o600);
    const h = encodeFileHeader(header);
    writevSync(this.fd, [h], 0);
    this.nextSeq = header.firstSeq;
  }

  /**
   * Reopens the log of a serve that died while recording, to go on appending where it
   * stopped. A record torn by the kill (a write the kill cut short: its image write never
   * began, since the log is written first) is cut off, so a reader following the file
   * sees the next record in its place. Returns the last whole record too: the dead serve
   * may have logged it without writing the image, so the caller writes it again.
   */
  static continueLog(path: string): { writer: DeltaLogWriter; last?: DeltaRecord } {
    const end = findLogEnd(path);
    const fd = openSync(path, "r+");
    try {
      ftruncateSync(fd, end.position);
    } catch (cause) {
      closeSync(fd);
      throw new DeltaLogError(`cannot cut the torn tail of ${path}`, { cause });
    }
    return { writer: new DeltaLogWriter(path, end.header, { fd, end }), last: end.last };
  }

  /** The sequence number the next record will get. */
  get next(): bigint {
    return this.nextSeq;
  }

  /** Appends one record and returns its sequence number. Throws if the log cannot be written. */
  append(kind: DeltaKindValue, offset: number, length: number, data?: Payload): bigint {
    const payload = kind === DeltaKind.DATA ? data! : EMPTY;
    const seq = this.nextSeq;
    const total = RECORD_HEADER_LEN + payloadLength(payload);
    // Small records (the 4 KiB writes of a busy VM) are staged with their header and
    // written with one syscall; large ones go out as header + payload with writev.
    const staged = total <= this.stage.length;
    const h = staged ? this.stage.subarray(0, RECORD_HEADER_LEN) : Buffer.allocUnsafe(RECORD_HEADER_LEN);
    encodeRecordHeader(h, kind, seq, offset, length);
    if (staged) {
      let at = RECORD_HEADER_LEN;
      for (const piece of piecesOf(payload)) {
        this.stage.set(piece, at);
        at += piece.length;
      }
    }
    h.writeUInt32LE(recordChecksum(h, payload), 28);
    let written = staged
      ? writeSync(this.fd, this.stage, 0, total, this.position)
      : writevSync(this.fd, [h, ...piecesOf(payload)], this.position);
    // A short write (rare: a signal, a nearly full disk) is finished piece by piece.
    while (written < total) {
      const rest = (staged ? this.stage.subarray(0, total) : Buffer.concat([h, ...piecesOf(payload)])).subarray(written);
      const n = writeSync(this.fd, rest, 0, rest.length, this.position + written);
      if (n <= 0) throw new DeltaLogError(`${this.path}: short write`);
      written += n;
    }
    this.position += total;
    this.nextSeq = seq + 1n;
    this.records++;
    this.bytes += total;
    this.shipBytes += shipCost(kind, length);
    return seq;
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

export interface LogEnd {
  header: DeltaLogHeader;
  /** Just past the last whole record. */
  position: number;
  nextSeq: bigint;
  /** The ship cost of the whole records (shipCost). */
  shipBytes: number;
  last?: DeltaRecord;
}

/**
 * Where the whole records of a log end. Only headers are read on the way (a log can hold
 * gigabytes); the last record is checked whole, since a kill can only tear the tail.
 */
export function findLogEnd(path: string): LogEnd {
  const reader = new DeltaLogReader(path);
  try {
    const walk = new HeaderWalk(reader.fd, FILE_HEADER_LEN, reader.header.firstSeq);
    const { at: lastAt, seq, end, shipBytes } = walk.toEnd();
    if (lastAt < 0) return { header: reader.header, position: FILE_HEADER_LEN, nextSeq: reader.header.firstSeq, shipBytes: 0 };
    reader.position = lastAt;
    reader.expectSeqAt(seq - 1n);
    const last = reader.next();
    // A last record that fails its checksum was torn mid-data: it never reached the image.
    if (last === "end") return { header: reader.header, position: lastAt, nextSeq: seq - 1n, shipBytes: shipBytes - walk.lastCost };
    return { header: reader.header, position: end, nextSeq: seq, shipBytes, last };
  } finally {
    reader.close();
  }
}

/** How much of a log is read at once: a header-only log (coalesce mode) is 32 bytes a record. */
const READ_AHEAD_BYTES = 256 * 1024;

/**
 * Reads a log in blocks, so that following it record by record is not a syscall a header.
 * A log only grows, and its whole records never change (a killed serve's successor cuts only
 * the torn tail, see continueLog): a record read whole from the block is the file's. What is
 * not yet whole may change, so a caller that finds a record incomplete calls forget(), and
 * the next look reads the file again.
 */
class ReadAhead {
  private readonly buf = Buffer.allocUnsafe(READ_AHEAD_BYTES);
  private start = 0;
  private length = 0;
  /** Blocks read from the file so far: whether a look read it afresh. */
  reads = 0;

  constructor(private readonly fd: number) {}

  /** Up to `n` bytes at `at` (fewer at the file's end), the caller's to keep. */
  copy(at: number, n: number): Buffer {
    if (n <= this.buf.length) return Buffer.from(this.view(at, n));
    const own = Buffer.allocUnsafe(n);
    return own.subarray(0, readSync(this.fd, own, 0, n, at));
  }

  /** Up to `n` bytes at `at` (n at most a block; fewer at the file's end): a view valid until the next call. */
  view(at: number, n: number): Buffer {
    if (at < this.start || at + n > this.start + this.length) {
      this.start = at;
      this.length = readSync(this.fd, this.buf, 0, this.buf.length, at);
      this.reads++;
    }
    const from = at - this.start;
    return this.buf.subarray(from, from + Math.min(n, this.length - from));
  }

  forget(): void {
    this.length = 0;
  }
}

/** Whether a record header (kind other than DATA: its checksum covers the header alone) is whole. */
function headerChecksumOk(h: Buffer): boolean {
  return h.readUInt32LE(28) === Bun.hash.crc32(h.subarray(0, 28)) >>> 0;
}

/**
 * Walks a log's record headers forward from a position, without reading any data: where
 * the whole records end, and their ship cost. It checks what a header alone can show (magic,
 * kind, sequence, length within the file); a record's checksum is the reader's to check.
 * Used to find a killed serve's tail, and by the source to count the queue ahead of it.
 */
export class HeaderWalk {
  private readonly file: ReadAhead;
  /** Start of the last whole record walked (-1: none yet), and its ship cost. */
  lastAt = -1;
  lastCost = 0;
  shipBytes = 0;

  constructor(
    private readonly fd: number,
    /** Where the next header is expected. */
    public at: number,
    public seq: bigint,
  ) {
    this.file = new ReadAhead(fd);
  }

  /** Walks to the last whole record in the file now; stops at anything that is not one yet. */
  toEnd(): { at: number; seq: bigint; end: number; shipBytes: number } {
    const size = fstatSync(this.fd).size;
    for (;;) {
      const h = this.file.view(this.at, RECORD_HEADER_LEN);
      if (h.length < RECORD_HEADER_LEN) break;
      const kind = h.readUInt8(4);
      const length = h.readUInt32LE(24);
      const dataLen = kind === DeltaKind.DATA ? length : 0;
      const whole =
        h.readUInt32LE(0) === RECORD_MAGIC &&
        knownKind(kind) &&
        dataLen <= RECORD_MAX_DATA &&
        h.readBigUInt64LE(8) === this.seq &&
        this.at + RECORD_HEADER_LEN + dataLen <= size &&
        (kind === DeltaKind.DATA || headerChecksumOk(h));
      if (!whole) {
        this.file.forget(); // not yet: read it from the file next time
        break;
      }
      this.lastAt = this.at;
      this.lastCost = shipCost(kind, length);
      this.shipBytes += this.lastCost;
      this.at += RECORD_HEADER_LEN + dataLen;
      this.seq++;
    }
    return { at: this.lastAt, seq: this.seq, end: this.at, shipBytes: this.shipBytes };
  }
}

/** Result of one read attempt at the reader's position. */
export type ReadResult = DeltaRecord | "end";

/**
 * Reads a delta log from its start or from a saved position. `next()` returns "end" when
 * the file holds no complete, valid record at the position yet (the writer may still be
 * appending); `next({ final: true })` treats such a tail as corruption instead.
 */
export class DeltaLogReader {
  readonly header: DeltaLogHeader;
  fd: number;
  private expectSeq: bigint;
  position: number;
  /** The ship cost of the records read so far (shipCost), from where the reader began. */
  private shipRead = 0;
  /** Counts the queue: the same records' headers, walked ahead to the file's end. */
  private walk?: HeaderWalk;
  /** shipRead when the walk began at the reader's position then. */
  private walkBase = 0;
  private file!: ReadAhead;

  constructor(
    readonly path: string,
    resume?: { position: number; nextSeq: bigint },
  ) {
    try {
      this.fd = openSync(path, "r");
    } catch (cause) {
      throw new DeltaLogError(`cannot open delta log ${path}`, { cause });
    }
    const hb = Buffer.alloc(FILE_HEADER_LEN);
    if (readSync(this.fd, hb, 0, FILE_HEADER_LEN, 0) !== FILE_HEADER_LEN) {
      closeSync(this.fd);
      throw new DeltaLogError(`${path}: delta log too short for its header`);
    }
    this.header = decodeFileHeader(hb, path);
    this.position = resume?.position ?? FILE_HEADER_LEN;
    this.expectSeq = resume?.nextSeq ?? this.header.firstSeq;
    this.file = new ReadAhead(this.fd);
  }

  /** Repositions the sequence check (with `position`): for a scan that skipped records. */
  expectSeqAt(seq: bigint): void {
    this.expectSeq = seq;
  }

  /** The sequence number the next record must carry. */
  get nextSeq(): bigint {
    return this.expectSeq;
  }

  next(opts: { final?: boolean } = {}): ReadResult {
    const reads = this.file.reads;
    const r = this.nextIn({});
    if (r !== "end") return r;
    // "Not yet", judged from a block read before this call: what lay past the whole records
    // then may have changed (a torn tail, cut by a serve started again), so ask the file
    // itself. Final: again, to say why.
    if (this.file.reads === reads || opts.final) return this.nextIn(opts);
    return "end";
  }

  private nextIn(opts: { final?: boolean }): ReadResult {
    const seen = this.file.view(this.position, RECORD_HEADER_LEN);
    if (seen.length === 0) return this.incomplete(opts, undefined);
    if (seen.length < RECORD_HEADER_LEN) return this.incomplete(opts, "a truncated record header");
    const h = Buffer.from(seen); // the view is the block's: the data's read may replace it
    if (h.readUInt32LE(0) !== RECORD_MAGIC) return this.incomplete(opts, "a record without its magic");
    const kind = h.readUInt8(4);
    const length = h.readUInt32LE(24);
    if (!knownKind(kind)) return this.incomplete(opts, `an unknown record kind ${kind}`);
    if (kind === DeltaKind.DATA && length > RECORD_MAX_DATA) return this.incomplete(opts, `a record of ${length} bytes`);
    let data: Uint8Array = EMPTY;
    if (kind === DeltaKind.DATA && length > 0) {
      data = this.file.copy(this.position + RECORD_HEADER_LEN, length);
      if (data.length < length) return this.incomplete(opts, "a truncated record");
    }
    if (h.readUInt32LE(28) !== recordChecksum(h, data)) return this.incomplete(opts, "a record checksum mismatch");
    const seq = h.readBigUInt64LE(8);
    if (seq !== this.expectSeq)
      throw new DeltaLogError(`${this.path}: sequence gap at byte ${this.position}: found ${seq}, expected ${this.expectSeq}`);
    const offset = Number(h.readBigUInt64LE(16));
    this.position += RECORD_HEADER_LEN + data.length;
    this.expectSeq = seq + 1n;
    this.shipRead += shipCost(kind, length);
    return { seq, kind: kind as DeltaKindValue, offset, length, data, end: this.position };
  }

  /**
   * The ship cost (shipCost) of the whole records past the reader's position: the queue.
   * Only headers ahead are read, each once.
   */
  pendingShipBytes(): number {
    // A walk the reader has caught up with starts again from the reader: the reader checks
    // every record whole, and so never strays from the records' boundaries, where a walk
    // that counted a torn DATA record (cut later by a serve started again) would.
    if (!this.walk || this.walk.at <= this.position) {
      this.walk = new HeaderWalk(this.fd, this.position, this.expectSeq);
      this.walkBase = this.shipRead;
    }
    return Math.max(0, this.walkBase + this.walk.toEnd().shipBytes - this.shipRead);
  }

  /** Where the reader stands, to come back to (a scan ahead that is then not taken). */
  mark(): { position: number; seq: bigint; shipRead: number } {
    return { position: this.position, seq: this.expectSeq, shipRead: this.shipRead };
  }

  rewind(m: { position: number; seq: bigint; shipRead: number }): void {
    this.position = m.position;
    this.expectSeq = m.seq;
    this.shipRead = m.shipRead;
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  /** No whole record at the position yet (`what`: why, or undefined at the file's end). */
  private incomplete(opts: { final?: boolean }, what: string | undefined): "end" {
    this.file.forget();
    if (what === undefined) return "end";
    if (opts.final) throw new DeltaLogError(`${this.path}: ${what} at byte ${this.position} (seq ${this.expectSeq})`);
    return "end";
  }
}

/** Applies one record to an image through a positional writer: the dest side and tests use it. */
export interface DeltaTarget {
  write(offset: number, data: Uint8Array): void;
  zero(offset: number, length: number): void;
}

/** Reads the live image: what a WRITTEN record stands for. */
export type LiveRead = (offset: number, length: number) => Uint8Array;

/**
 * Applies one record. AHEAD records change nothing here: the copy the log is replayed onto
 * was read after them, and carries them. A WRITTEN record takes the range from the live
 * image (`live`): the log then rebuilds the image it was recorded from, read at the end.
 */
export function applyDelta(target: DeltaTarget, rec: DeltaRecord, live?: LiveRead): void {
  if (rec.kind === DeltaKind.DATA) target.write(rec.offset, rec.data);
  else if (rec.kind === DeltaKind.ZERO) target.zero(rec.offset, rec.length);
  else if (rec.kind === DeltaKind.WRITTEN) {
    if (!live) throw new DeltaLogError(`record ${rec.seq} is WRITTEN (a range without its bytes): replaying it needs the live image`);
    target.write(rec.offset, live(rec.offset, rec.length));
  }
}

/** Replays a whole, finished log onto a target; returns the number of records applied. */
export function replayDeltaLog(path: string, target: DeltaTarget, live?: LiveRead): number {
  const reader = new DeltaLogReader(path);
  try {
    let n = 0;
    for (let r = reader.next({ final: true }); r !== "end"; r = reader.next({ final: true })) {
      applyDelta(target, r, live);
      n++;
    }
    return n;
  } finally {
    reader.close();
  }
}
