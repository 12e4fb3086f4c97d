// Record mode: every write that reaches the image is appended to the delta log before
// the client hears it completed. Together with a copy of the image read after recording
// began, the log rebuilds the live image exactly (see delta-log.ts for the format).
//
// It must sit directly on a backend whose writes apply synchronously (the file): the image
// write and the log append then happen in one event-loop turn, so the log order is the
// image order and no control request can fall between them.
//
// Order: log first, then image, as in any write-ahead log. A serve killed between the two
// leaves a record whose write may not have reached the image; the next serve of the image
// writes the log's last record again before it answers anything (`resume`), so the log
// and the image agree again. (Image first would leave a write in the image that no log
// holds: nothing could find it after the kill.) If the log append fails (its disk is
// full), recording is marked failed and the write still goes to the image: the VM is not
// punished; the migration reads `failed` and aborts before the point of no return. If the
// image write fails after its record was logged, the log no longer describes the image:
// recording is marked failed the same way.
//
// The log is trusted across a process restart (the page cache holds every append), never
// across a reboot: it is not synced per write, and the run directory is often a tmpfs.
//
// The bulk copy's cursor (coalesce mode). The source raises it past a range, and only then
// decides anything about that range (where its holes are, what it holds): so the range is
// decided after every write past the cursor reached the image, and the copy carries them.
// Such a write (or zero, or trim) is logged as AHEAD, without its bytes; one across the
// cursor becomes two records, the part behind whole and the part past it AHEAD. That saves
// the second copy of what the VM writes ahead of the copy (most of it, early in a bulk).
// Why split: no record logged whole may reach past the cursor of its day. The cursor only
// rises, so then no record logged whole overlaps a later AHEAD one, which, replayed or sent
// as a delta after the copy, would undo what the copy carries. A recording with no cursor
// (a serve restarted under it) logs every write whole, anywhere: its first cursor starts
// past all of them. The AHEAD part is logged after the image write, not before: it has no
// bytes to write again after a kill (the copy reads the range later), and so the record
// logged before a write's image write is always its last until that write is in the image
// (what the source's settle rule relies on, see below).
//
// Ranges (coalesce mode, `ranges`): a write behind the cursor is logged as WRITTEN, its
// range without its bytes, and the source sends the image's content over the range when
// it ships the record, as a copy pass does (copy-pass.ts). That saves the second copy of
// every byte the VM writes behind the copy too: the log grows by 32 bytes a write. Why the
// destination still ends up with the image: each byte's last record is shipped after its
// last write reached the image, with what the image holds then (a later write has a later
// record, shipped after it). "After its write reached the image" is the settle rule: a
// record is logged before its image write, in one turn of the serve, so the source may read
// the image for a record once a later record is in the log (appended in a later step), or
// once a control call it made after reading the record has answered (the serve answers
// between turns), or after the fence. Zeros and trims stay ZERO: exact, and free to send.
// A serve restarted under a recording logs whole again (ranges is not persisted): DATA is
// correct in any mode, and a restart is rare.

import { join } from "node:path";
import { BackendDecorator, type BlockBackend, type MaybePromise } from "../block/backend.ts";
import { applyDelta, DeltaKind, type DeltaKindValue, DeltaLogWriter } from "./delta-log.ts";
import { type Payload, payloadLength, slicePayload } from "../block/payload.ts";
import type { TrackingBackend } from "./write-tracking.ts";

/**
 * Test-only faults (WANMIG_TEST_FAULT), to prove the hand-off catches a log that misses a
 * write: "drop-record:N" leaves the Nth recorded write out of the log; "hide-write:N" also
 * hides it from the serve's write count, so only the dirty map still knows.
 */
function faultFromEnv(): { kind: "drop-record" | "hide-write"; nth: number } | undefined {
  const m = /^(drop-record|hide-write):(\d+)$/.exec(process.env.WANMIG_TEST_FAULT ?? "");
  return m ? { kind: m[1] as "drop-record" | "hide-write", nth: Number(m[2]) } : undefined;
}

export interface RecordingState {
  active: boolean;
  path?: string;
  firstSeq?: string;
  nextSeq?: string;
  records: number;
  bytes: number;
  maxBytes?: number;
  failed?: string;
  /** The bulk copy's cursor, if the source set one: writes past it are logged without data. */
  bulkCursor?: number;
  /** Bytes written past the cursor, logged without their data. */
  aheadBytes: number;
  /** Writes across the cursor, logged as two records each (the log then holds one record more than the writes). */
  splits: number;
  /** Writes behind the cursor are logged as ranges (WRITTEN), without their bytes. */
  ranges: boolean;
  /** What shipping the log costs (delta-log.ts shipCost): the queue the throttles measure. */
  shipBytes: number;
}

export class RecordingBackend extends BackendDecorator {
  private log?: DeltaLogWriter;
  private failure?: string;
  /** Sequence numbers go on across recordings of one server, so logs never overlap. */
  private nextSeq = 1n;

  /** The log's bound (log-bound.ts): past it recording fails, and the write still goes to the image. */
  maxBytes?: number;
  private readonly fault = faultFromEnv();
  private lastStartMs = 0;
  private faultCount = 0;
  private cursor?: number;
  /** While there is no cursor: the end of the furthest record logged whole. */
  private wholeEnd = 0;
  private aheadBytes = 0;
  private splits = 0;
  private ranges = false;

  constructor(
    inner: BlockBackend,
    private readonly onFailure?: (message: string) => void,
    private readonly tracker?: TrackingBackend,
  ) {
    super(inner);
  }

  get active(): boolean {
    return this.log !== undefined;
  }

  /**
   * Starts a new log in `dir`; every write from now on is in it. `cursor`: the bulk copy's,
   * from the first write (0: it has decided nothing yet); without it, every write whole.
   * `ranges`: writes logged whole are logged as their ranges (WRITTEN, see the header).
   */
  start(dir: string, name: string, cursor?: number, ranges = false): RecordingState {
    if (this.log) return this.state();
    this.cursor = cursor;
    this.ranges = ranges;
    this.wholeEnd = 0;
    // Time for the operator, first sequence for uniqueness; two recordings without a write
    // between them in one ms would still collide, so the time never repeats here.
    this.lastStartMs = Math.max(Date.now(), this.lastStartMs + 1);
    const path = join(dir, `${name}.${this.lastStartMs}.${this.nextSeq}.deltas`);
    this.log = new DeltaLogWriter(path, { firstSeq: this.nextSeq, imageSize: this.size, createdMs: Date.now() });
    this.failure = undefined;
    return this.state();
  }

  /**
   * Goes on with the log a killed serve of this image left: its torn tail cut off, its
   * last record written to the image again (log first: the kill may have come between).
   */
  resume(path: string): RecordingState & { rewrote?: { seq: bigint; offset: number; length: number } } {
    if (this.log) return this.state();
    this.cursor = undefined; // every write whole until the source says where its copy is
    this.ranges = false;
    this.wholeEnd = 0;
    this.aheadBytes = 0;
    this.splits = 0;
    const { writer, last } = DeltaLogWriter.continueLog(path);
    // A WRITTEN record has no bytes to write again: the image holds what the source sends.
    if (last && last.kind !== DeltaKind.WRITTEN) applyDelta({ write: (o, d) => this.inner.write(o, d, false), zero: (o, l) => this.inner.zero(o, l, false, true) }, last);
    this.log = writer;
    this.failure = undefined;
    return { ...this.state(), rewrote: last && { seq: last.seq, offset: last.offset, length: last.length } };
  }

  /**
   * Raises the bulk copy's cursor to `offset` (it never falls within a recording). A
   * recording that had none (a serve restarted) logged writes whole anywhere: the first
   * cursor starts past all of them, so none can overlap a later AHEAD write.
   */
  raiseCursor(offset: number): RecordingState {
    if (this.log) this.cursor = Math.max(this.cursor ?? this.wholeEnd, offset);
    return this.state();
  }

  stop(): RecordingState {
    const st = this.state();
    this.cursor = undefined;
    this.ranges = false;
    this.aheadBytes = 0;
    this.splits = 0;
    if (this.log) {
      this.nextSeq = this.log.next;
      this.log.close();
      this.log = undefined;
    }
    return { ...st, active: false };
  }

  state(): RecordingState {
    const l = this.log;
    return {
      active: !!l,
      path: l?.path,
      firstSeq: l?.header.firstSeq.toString(),
      nextSeq: (l?.next ?? this.nextSeq).toString(),
      records: l?.records ?? 0,
      bytes: l?.bytes ?? 0,
      maxBytes: l ? this.maxBytes : undefined,
      failed: this.failure,
      bulkCursor: l ? this.cursor : undefined,
      aheadBytes: this.aheadBytes,
      splits: this.splits,
      ranges: !!l && this.ranges,
      shipBytes: l?.shipBytes ?? 0,
    };
  }

  override write(offset: number, data: Payload, fua: boolean): MaybePromise<void> {
    const ahead = this.recordBehind(this.ranges ? DeltaKind.WRITTEN : DeltaKind.DATA, offset, payloadLength(data), data);
    const done = this.applied(() => this.inner.write(offset, data, fua));
    this.recordAhead(ahead);
    return done;
  }

  override zero(offset: number, length: number, fua: boolean, mayPunch: boolean): MaybePromise<void> {
    const ahead = this.recordBehind(DeltaKind.ZERO, offset, length);
    const done = this.applied(() => this.inner.zero(offset, length, fua, mayPunch));
    this.recordAhead(ahead);
    return done;
  }

  override trim(offset: number, length: number, fua: boolean): MaybePromise<void> {
    const ahead = this.recordBehind(DeltaKind.ZERO, offset, length);
    const done = this.applied(() => this.inner.trim(offset, length, fua));
    this.recordAhead(ahead);
    return done;
  }

  /**
   * Logs the part of a change behind the cursor (all of it without one), before the image
   * write; returns the part past the cursor, which recordAhead logs after it (see the header).
   */
  private recordBehind(kind: DeltaKindValue, offset: number, length: number, data?: Payload): { offset: number; length: number } | undefined {
    const c = this.cursor;
    if (c === undefined) this.wholeEnd = Math.max(this.wholeEnd, offset + length);
    if (!this.log || c === undefined || offset + length <= c) {
      this.record(kind, offset, length, kind === DeltaKind.DATA ? data : undefined);
      return undefined;
    }
    const behind = Math.max(0, c - offset);
    if (behind > 0) {
      this.record(kind, offset, behind, kind === DeltaKind.DATA && data ? slicePayload(data, 0, behind) : undefined);
      this.splits++;
    }
    return { offset: offset + behind, length: length - behind };
  }

  private recordAhead(ahead: { offset: number; length: number } | undefined): void {
    if (!ahead) return;
    this.record(DeltaKind.AHEAD, ahead.offset, ahead.length);
    this.aheadBytes += ahead.length;
  }

  override close(): void {
    this.stop();
    super.close();
  }

  /** Runs the image write; if it fails after its record was logged, the log is wrong from here on. */
  private applied(write: () => MaybePromise<void>): MaybePromise<void> {
    try {
      return write();
    } catch (err) {
      if (this.log && !this.failure) this.fail(`the image write failed after it was logged (${err instanceof Error ? err.message : String(err)})`);
      throw err;
    }
  }

  private fail(message: string): void {
    this.failure = message;
    this.onFailure?.(message);
  }

  private record(kind: DeltaKindValue, offset: number, length: number, data?: Payload): void {
    if (!this.log || this.failure) return;
    if (this.fault && ++this.faultCount === this.fault.nth) {
      if (this.fault.kind === "hide-write" && this.tracker) this.tracker.applied--;
      return;
    }
    if (this.maxBytes !== undefined && this.log.bytes + (data ? payloadLength(data) : 0) > this.maxBytes) {
      this.fail(`the delta log reached its bound of ${this.maxBytes} bytes; the VM's writes go on, unrecorded`);
      return;
    }
    try {
      this.log.append(kind, offset, length, data);
    } catch (cause) {
      this.fail(`cannot append to ${this.log.path}: ${cause instanceof Error ? cause.message : String(cause)}`);
    }
  }
}
