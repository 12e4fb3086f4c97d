// Record mode: every write that reaches the image is appended to the delta log before
// the client hears it completed. Together with a copy of the image read after recording
// began, the log rebuilds the live image exactly (see delta-log.ts for the format).
//
// It must sit directly on a backend whose writes apply synchronously (the file): the image
// write and the log append then happen in one event-loop turn, so the log order is the
// image order and no control request can fall between them.
//
// Order: image first, then log. If the image write fails, nothing is logged (the client
// gets the error). If the log append fails (its disk is full), the image already changed
// but the log misses it: recording is marked failed and appends stop. The VM is not
// punished for it: its write did land. The migration reads `failed` from the status and
// aborts before the point of no return, which leaves the VM running here, untouched.

import { join } from "node:path";
import { BackendDecorator, type BlockBackend, type MaybePromise } from "./backend.ts";
import { DeltaKind, type DeltaKindValue, DeltaLogWriter } from "./delta-log.ts";

export interface RecordingState {
  active: boolean;
  path?: string;
  firstSeq?: string;
  nextSeq?: string;
  records: number;
  bytes: number;
  failed?: string;
}

export class RecordingBackend extends BackendDecorator {
  private log?: DeltaLogWriter;
  private failure?: string;
  /** Sequence numbers go on across recordings of one server, so logs never overlap. */
  private nextSeq = 1n;

  constructor(
    inner: BlockBackend,
    private readonly onFailure?: (message: string) => void,
  ) {
    super(inner);
  }

  get active(): boolean {
    return this.log !== undefined;
  }

  /** Starts a new log in `dir`; every write from now on is in it. */
  start(dir: string, name: string): RecordingState {
    if (this.log) return this.state();
    // Time for the operator, first sequence for uniqueness (two recordings in one ms).
    const path = join(dir, `${name}.${Date.now()}.${this.nextSeq}.deltas`);
    this.log = new DeltaLogWriter(path, { firstSeq: this.nextSeq, imageSize: this.size, createdMs: Date.now() });
    this.failure = undefined;
    return this.state();
  }

  stop(): RecordingState {
    const st = this.state();
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
      failed: this.failure,
    };
  }

  override write(offset: number, data: Uint8Array, fua: boolean): MaybePromise<void> {
    const r = this.inner.write(offset, data, fua);
    this.record(DeltaKind.DATA, offset, data.length, data);
    return r;
  }

  override zero(offset: number, length: number, fua: boolean, mayPunch: boolean): MaybePromise<void> {
    const r = this.inner.zero(offset, length, fua, mayPunch);
    this.record(DeltaKind.ZERO, offset, length);
    return r;
  }

  override trim(offset: number, length: number, fua: boolean): MaybePromise<void> {
    const r = this.inner.trim(offset, length, fua);
    this.record(DeltaKind.ZERO, offset, length);
    return r;
  }

  override close(): void {
    this.stop();
    super.close();
  }

  private record(kind: DeltaKindValue, offset: number, length: number, data?: Uint8Array): void {
    if (!this.log || this.failure) return;
    try {
      this.log.append(kind, offset, length, data);
    } catch (cause) {
      this.failure = `cannot append to ${this.log.path}: ${cause instanceof Error ? cause.message : String(cause)}`;
      this.onFailure?.(this.failure);
    }
  }
}
