// Phase 3, deltas: ship the delta log, record by record, in sequence order. The log is
// tailed while `serve` appends to it; `final` reads are only made after the fence, when
// nothing can be appended any more, so a torn tail then is corruption, not "not yet".
// In coalesce mode a long backlog that rewrites the same ranges goes as a copy pass
// (copy-pass.ts): the image's current content over those ranges, once. A WRITTEN record
// (a write logged as its range, recording.ts) goes the same way on its own: the image's
// content over its range, read when it is sent.
//
// Settled: the image may be read for a record only once its write is in the image. The
// serve logs a record, then writes the image, in one turn; the next record it appends comes
// after. So a record is settled once the log holds a later one, once a control call made
// after it was read has answered (the serve answers between turns), or after the fence.

import { DeltaKind, DeltaLogReader, type DeltaRecord, shipCost } from "../disk/recording/delta-log.ts";
import { type BulkReadLog, coalesceBatch } from "./coalesce.ts";
import { copyFrames, PASS_MAX_SCAN_BYTES, PASS_MIN_LOG_BYTES, passPays, totalLength, WrittenRanges } from "./copy-pass.ts";
import { type ImageFile, type ImageRef, openImage } from "../disk/image/image-set.ts";
import type { Channel } from "../net/channel.ts";
import type { Compressor } from "../net/compress.ts";
import { ProtocolError } from "../net/errors.ts";
import { type Ack, DeltaOp, msg, MsgType, typeName } from "../net/protocol.ts";
import { DeltasError } from "./errors.ts";

const BATCH_BYTES = 16 * 1024 * 1024;

export interface DeltaStreamOptions {
  compress: Compressor;
  /** Resume: the first sequence the destination still needs (0 = from the start). */
  from?: bigint;
  /** Coalesce mode: what the bulk copy carried; undefined in paper mode (send everything). */
  coalesce?: BulkReadLog;
  /** Every record read from the log, sent or not (the image digest marks its regions dirty). */
  onRecord?: (r: { offset: number; length: number; seq: bigint }) => void;
  /** The source image, which WRITTEN records and (in coalesce mode) copy passes read. */
  image?: ImageRef;
  /** A control call to the serve: once it answers, every record read before it is settled (see the header). */
  settle?: () => Promise<unknown>;
}

/** One frame of a copy pass, waiting to be read from the image and sent. */
interface PendingCopy {
  offset: number;
  length: number;
  /** The last record the pass stands for. */
  seq: bigint;
  /** Its number in the pass, from 1: what the destination's ACK counts. */
  part: number;
  last: boolean;
}

export class DeltaStreamer {
  private reader: DeltaLogReader;
  sent = 0;
  bytes = 0;
  /** Records dropped by coalescing, or stood for by a copy pass (never sent). */
  skipped = 0;
  /** Copy passes made, and the image bytes they sent. */
  copyPasses = 0;
  copiedBytes = 0;
  /** The last sequence sent (what the barrier names) and the last read from the log. */
  lastSeq = 0n;
  lastRead = 0n;

  wireBytes = 0;
  /** What the destination has acknowledged (applied, durable): ACK's bulk offset and next sequence. */
  ackedBulk = 0;
  ackedNext = 0n;
  /** Wire bytes the destination has acknowledged, all told (the link's measured rate). */
  ackedWireBytes = 0;
  /** The destination's last background sync of its image, ms (from its ACKs). */
  destSyncMs = 0;
  /** Sent and not yet acknowledged, oldest first: [seq, bytes on the wire, copy pass part or 0]. */
  private inFlight: [bigint, number, number][] = [];
  private inFlightBytes = 0;
  /** Records read from the log and not yet sent: a windowed pump stops mid-batch. */
  private carry: DeltaRecord[] = [];
  private carryBytes = 0;
  /** The planned copy pass's frames not yet sent, last first. */
  private copies: PendingCopy[] = [];
  private copiesBytes = 0;
  /** The source image, if given: what WRITTEN records and copy passes read. */
  private readonly image?: ImageFile;
  /** Every record up to this sequence is settled: its write is in the image (see the header). */
  private settledThrough = 0n;
  /** Control calls made to settle a record (the log held nothing after it yet). */
  settleCalls = 0;
  /** WRITTEN records sent, with the image's content. */
  rangesSent = 0;
  /** A scan found no pass worth making before this log position: do not scan again until past it. */
  private noScanBefore = 0;

  constructor(
    private ch: Channel,
    logPath: string,
    private readonly opts: DeltaStreamOptions,
  ) {
    try {
      this.reader = new DeltaLogReader(logPath);
    } catch (cause) {
      throw new DeltasError("cannot open the delta log", { cause });
    }
    this.lastSeq = this.reader.header.firstSeq - 1n;
    try {
      if (opts.image) this.image = openImage(opts.image, true);
    } catch (cause) {
      this.reader.close();
      throw new DeltasError("cannot open the source image", { cause });
    }
  }

  /** What the log not yet sent costs to ship (shipCost): the queue the throttling policy and the hand-off watch. */
  pendingBytes(): number {
    return this.reader.pendingShipBytes() + this.carryBytes + this.copiesBytes;
  }

  /** Image bytes of the current copy pass not yet sent (0: none under way). */
  copyLeftBytes(): number {
    return this.copiesBytes;
  }

  /** Wire bytes per raw byte sent so far (1 before anything was sent, or without compression). */
  compressionRatio(): number {
    return this.bytes > 0 ? this.wireBytes / this.bytes : 1;
  }

  /** Delta bytes sent that the destination has not yet acknowledged as applied. */
  unackedBytes(): number {
    return this.inFlightBytes;
  }

  /** The connection's drain meter (link-meter.ts): when its kernel buffers were full, and what they took. */
  drainTotals(): { busyMs: number; busyBytes: number } {
    return this.ch.drainTotals();
  }

  /** Takes the ACKs that have arrived (without waiting). An ERROR from the destination throws. */
  takeAcks(): void {
    for (let m = this.ch.tryRecv(); m; m = this.ch.tryRecv()) {
      if (m.type !== MsgType.ACK) throw new ProtocolError(`expected ACK, got ${typeName(m.type)}`);
      this.ackedBulk = Math.max(this.ackedBulk, m.bulkOffset);
      if (m.nextSeq > this.ackedNext) this.ackedNext = m.nextSeq;
      this.destSyncMs = m.syncMs;
      this.retire(m);
    }
  }

  /**
   * Drops what an ACK covers from the in-flight list: everything below its next sequence,
   * and the first `copied` frames of the open copy pass. That pass is the oldest one left:
   * the destination applies in order, so once the ones below nextSeq are gone, the head of
   * the list is the pass it is in.
   */
  private retire(ack: Ack): void {
    for (;;) {
      const head = this.inFlight[0];
      if (!head || !(head[0] < this.ackedNext || (head[2] > 0 && head[2] <= ack.copied))) return;
      this.inFlight.shift();
      this.inFlightBytes -= head[1];
      this.ackedWireBytes += head[1];
    }
  }

  /**
   * Sends every complete record available now; returns how many. With `window`, stops
   * once that many wire bytes are unacknowledged: on a slow link a round then ends in
   * time for the convergence controller to look, instead of blocking on the socket until
   * the whole log is out.
   */
  async pump(opts: { final?: boolean; pastPointOfNoReturn?: boolean; window?: number } = {}): Promise<number> {
    this.ch.cork();
    try {
      return await this.pumpCorked(opts);
    } finally {
      this.ch.uncork(); // what the round gathered goes now
    }
  }

  private async pumpCorked(opts: { final?: boolean; window?: number; pastPointOfNoReturn?: boolean }): Promise<number> {
    let n = 0;
    const coalesce = this.opts.coalesce;
    for (;;) {
      if (opts.window !== undefined && this.inFlightBytes >= opts.window) return n;
      if (this.copies.length) {
        await this.sendCopy(this.copies.pop()!, opts.final);
        n++;
        continue;
      }
      if (!this.carry.length) {
        // Not after the fence: by then the queue fits the downtime budget, and a pass's
        // reads would only add to it.
        if (this.image && !opts.final && this.planPass(this.image)) continue;
        const batch = this.readBatch(opts);
        if (!batch.length) return n;
        this.carry = (coalesce ? coalesceBatch(batch) : batch).reverse();
        this.carryBytes = this.carry.reduce((sum, r) => sum + shipCost(r.kind, r.length), 0);
      }
      const r = this.carry.pop()!;
      this.carryBytes -= shipCost(r.kind, r.length);
      // AHEAD: written past the bulk copy's cursor, so the copy carries it (recording.ts).
      // Were that ever false, the hand-off's digest (which rehashes the range at the
      // source: onRecord marked it) would differ, before the point of no return.
      if (r.kind === DeltaKind.AHEAD || coalesce?.carries(r)) {
        this.skipped++;
        continue;
      }
      await this.send(r, opts.final);
      n++;
    }
  }

  /** Read a record: the one before it is settled, its successor being in the log. */
  private noteRead(r: DeltaRecord): void {
    if (r.seq - 1n > this.settledThrough) this.settledThrough = r.seq - 1n;
  }

  /** Waits until the image may be read for record `seq` (see the header). */
  private async settled(seq: bigint, final?: boolean): Promise<void> {
    if (seq <= this.settledThrough || final) return;
    if (!this.opts.settle) throw new DeltasError(`record ${seq} needs the image read after its write, and nothing can tell when that is`);
    const upTo = this.lastRead;
    this.settleCalls++;
    // What was gathered goes while we wait.
    this.ch.uncork();
    this.ch.cork();
    await this.opts.settle();
    if (upTo > this.settledThrough) this.settledThrough = upTo;
  }

  /** Up to BATCH_BYTES of complete records, past those the destination already has. */
  private readBatch(opts: { final?: boolean; pastPointOfNoReturn?: boolean }): DeltaRecord[] {
    const batch: DeltaRecord[] = [];
    let bytes = 0;
    while (bytes < BATCH_BYTES) {
      let r;
      try {
        r = this.reader.next({ final: opts.final });
      } catch (cause) {
        throw new DeltasError("the delta log is corrupt", { cause, pastPointOfNoReturn: opts.pastPointOfNoReturn });
      }
      if (r === "end") break;
      this.lastRead = r.seq;
      this.noteRead(r);
      this.opts.onRecord?.(r);
      if (r.seq < (this.opts.from ?? 0n)) continue; // applied at the destination before the link broke
      batch.push(r);
      bytes += shipCost(r.kind, r.length);
    }
    return batch;
  }

  /**
   * Reads the log ahead; if its records rewrite few enough ranges, takes them as read and
   * queues a copy pass over those ranges instead. Otherwise puts the reader back.
   */
  private planPass(image: ImageFile): boolean {
    const r0 = this.reader;
    if (r0.pendingShipBytes() < PASS_MIN_LOG_BYTES || r0.position < this.noScanBefore) return false;
    const start = r0.mark();
    const written = new WrittenRanges(image.size);
    const covered: { offset: number; length: number; seq: bigint }[] = [];
    let scanned = 0;
    let lastRead = this.lastRead;
    let passSeq = -1n;
    while (scanned < PASS_MAX_SCAN_BYTES) {
      let r;
      try {
        r = r0.next();
      } catch (cause) {
        throw new DeltasError("the delta log is corrupt", { cause });
      }
      if (r === "end") break;
      scanned += shipCost(r.kind, r.length);
      lastRead = r.seq;
      this.noteRead(r);
      if (r.seq < (this.opts.from ?? 0n)) continue; // applied at the destination before the link broke
      covered.push({ offset: r.offset, length: r.length, seq: r.seq });
      passSeq = r.seq;
      if (r.kind !== DeltaKind.AHEAD) written.add(r.offset, r.length); // the bulk copy carries AHEAD writes
    }
    const runs = written.merged();
    if (!covered.length || !passPays(written.recordBytes, runs)) {
      this.noScanBefore = r0.position;
      r0.rewind(start);
      return false;
    }
    for (const c of covered) this.opts.onRecord?.(c);
    this.lastRead = lastRead;
    this.skipped += covered.length;
    this.copyPasses++;
    const frames = copyFrames(runs);
    this.copies = frames.map((f, i) => ({ ...f, seq: passSeq, part: i + 1, last: i === frames.length - 1 })).reverse();
    this.copiesBytes = totalLength(runs);
    return true;
  }

  private async sendCopy(c: PendingCopy, final?: boolean): Promise<void> {
    await this.settled(c.seq, final);
    const data = this.readImage(c.offset, c.length, "a copy pass");
    const out = await this.opts.compress.compress(data);
    await this.ch.send(msg.delta({ seq: c.seq, op: c.last ? DeltaOp.COPY_END : DeltaOp.COPY, offset: c.offset, length: c.length, compressed: out.compressed, data: out.data }));
    this.copiesBytes -= c.length;
    this.wireBytes += out.data.length;
    this.inFlight.push([c.seq, out.data.length, c.part]);
    this.inFlightBytes += out.data.length;
    if (c.last) this.lastSeq = c.seq;
    this.sent++;
    this.bytes += c.length;
    this.copiedBytes += c.length;
  }

  /** Sends a record: a WRITTEN one with the image's content over its range, now. */
  private async send(r: DeltaRecord, final?: boolean): Promise<void> {
    let data = r.data;
    if (r.kind === DeltaKind.WRITTEN) {
      await this.settled(r.seq, final);
      data = this.readImage(r.offset, r.length, `record ${r.seq}`);
      this.rangesSent++;
    }
    const out = await this.opts.compress.compress(data);
    await this.ch.send(
      msg.delta({
        seq: r.seq,
        op: r.kind === DeltaKind.ZERO ? DeltaOp.ZERO : DeltaOp.DATA,
        offset: r.offset,
        length: r.length,
        compressed: out.compressed,
        data: out.data,
      }),
    );
    this.wireBytes += out.data.length;
    this.inFlight.push([r.seq, out.data.length, 0]);
    this.inFlightBytes += out.data.length;
    this.lastSeq = r.seq;
    this.sent++;
    this.bytes += data.length;
  }

  private readImage(offset: number, length: number, what: string): Buffer {
    if (!this.image) throw new DeltasError(`${what} needs the source image, and none was given`);
    const data = Buffer.allocUnsafe(length);
    try {
      this.image.read(offset, data);
    } catch (cause) {
      throw new DeltasError(`cannot read the source image for ${what}`, { cause });
    }
    return data;
  }

  close(): void {
    this.reader.close();
    this.image?.close();
  }
}
