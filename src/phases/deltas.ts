// Phase 3, deltas: ship the delta log, record by record, in sequence order. The log is
// tailed while `serve` appends to it; `final` reads are only made after the fence, when
// nothing can be appended any more, so a torn tail then is corruption, not "not yet".

import { DeltaKind, DeltaLogReader, type DeltaRecord } from "../disk/delta-log.ts";
import { type BulkReadLog, coalesceBatch } from "./coalesce.ts";
import type { Channel } from "../net/channel.ts";
import { maybeCompress } from "../net/compress.ts";
import { ProtocolError } from "../net/errors.ts";
import { DeltaOp, msg, MsgType, typeName } from "../net/protocol.ts";
import { DeltasError } from "./errors.ts";

const BATCH_BYTES = 16 * 1024 * 1024;

export interface DeltaStreamOptions {
  compress: boolean;
  /** Resume: the first sequence the destination still needs (0 = from the start). */
  from?: bigint;
  /** Coalesce mode: what the bulk copy carried; undefined in paper mode (send everything). */
  coalesce?: BulkReadLog;
  /** Every record read from the log, sent or not (the image digest marks its regions dirty). */
  onRecord?: (r: DeltaRecord) => void;
}

export class DeltaStreamer {
  private reader: DeltaLogReader;
  sent = 0;
  bytes = 0;
  /** Records dropped by coalescing (never sent). */
  skipped = 0;
  /** The last sequence sent (what the barrier names) and the last read from the log. */
  lastSeq = 0n;
  lastRead = 0n;

  wireBytes = 0;
  /** What the destination has acknowledged (applied, durable): ACK's bulk offset and next sequence. */
  ackedBulk = 0;
  ackedNext = 0n;
  /** Wire bytes the destination has acknowledged, all told (the link's measured rate). */
  ackedWireBytes = 0;
  /** Sent and not yet acknowledged, oldest first: [seq, bytes on the wire]. */
  private inFlight: [bigint, number][] = [];
  private inFlightBytes = 0;
  /** Records read from the log and not yet sent: a windowed pump stops mid-batch. */
  private carry: DeltaRecord[] = [];
  private carryBytes = 0;

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
  }

  /** Bytes of log not yet sent: the queue the throttling policy and the hand-off watch. */
  pendingBytes(): number {
    return this.reader.pendingBytes() + this.carryBytes;
  }

  /** Wire bytes per raw byte sent so far (1 before anything was sent, or without compression). */
  compressionRatio(): number {
    return this.bytes > 0 ? this.wireBytes / this.bytes : 1;
  }

  /** Delta bytes sent that the destination has not yet acknowledged as applied. */
  unackedBytes(): number {
    return this.inFlightBytes;
  }

  /** Takes the ACKs that have arrived (without waiting). An ERROR from the destination throws. */
  takeAcks(): void {
    for (let m = this.ch.tryRecv(); m; m = this.ch.tryRecv()) {
      if (m.type !== MsgType.ACK) throw new ProtocolError(`expected ACK, got ${typeName(m.type)}`);
      this.ackedBulk = Math.max(this.ackedBulk, m.bulkOffset);
      if (m.nextSeq > this.ackedNext) this.ackedNext = m.nextSeq;
    }
    while (this.inFlight.length && this.inFlight[0]![0] < this.ackedNext) {
      const wire = this.inFlight.shift()![1];
      this.inFlightBytes -= wire;
      this.ackedWireBytes += wire;
    }
  }

  /**
   * Sends every complete record available now; returns how many. With `window`, stops
   * once that many wire bytes are unacknowledged: on a slow link a round then ends in
   * time for the convergence controller to look, instead of blocking on the socket until
   * the whole log is out.
   */
  async pump(opts: { final?: boolean; pastPointOfNoReturn?: boolean; window?: number } = {}): Promise<number> {
    let n = 0;
    const coalesce = this.opts.coalesce;
    for (;;) {
      if (opts.window !== undefined && this.inFlightBytes >= opts.window) return n;
      if (!this.carry.length) {
        const batch = this.readBatch(opts);
        if (!batch.length) return n;
        this.carry = (coalesce ? coalesceBatch(batch) : batch).reverse();
        this.carryBytes = this.carry.reduce((sum, r) => sum + r.data.length, 0);
      }
      const r = this.carry.pop()!;
      this.carryBytes -= r.data.length;
      if (coalesce?.carries(r)) {
        this.skipped++;
        continue;
      }
      await this.send(r);
      n++;
    }
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
      this.opts.onRecord?.(r);
      if (r.seq < (this.opts.from ?? 0n)) continue; // applied at the destination before the link broke
      batch.push(r);
      bytes += r.data.length + 32;
    }
    return batch;
  }

  private async send(r: DeltaRecord): Promise<void> {
    const out = this.opts.compress && r.data.length ? maybeCompress(r.data) : { data: r.data, compressed: false };
    await this.ch.send(
      msg.delta({
        seq: r.seq,
        op: r.kind === DeltaKind.DATA ? DeltaOp.DATA : DeltaOp.ZERO,
        offset: r.offset,
        length: r.length,
        compressed: out.compressed,
        data: out.data,
      }),
    );
    this.wireBytes += out.data.length;
    this.inFlight.push([r.seq, out.data.length]);
    this.inFlightBytes += out.data.length;
    this.lastSeq = r.seq;
    this.sent++;
    this.bytes += r.data.length;
  }

  close(): void {
    this.reader.close();
  }
}
