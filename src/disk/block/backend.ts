// The block path: one interface, a file at the bottom, decorators on top
// (recording, fencing, throttling), in the manner of nbdkit's filters.
//
// Writes are synchronous when nothing delays them. That is a safety property, not only a
// speed trick: a write is applied to the image and appended to the delta log inside one
// turn of the event loop, so the log's order is exactly the image's order, and a control
// request (fence, start recording) can never land between the two halves of one write.
// A decorator that must delay (throttling) returns a promise and keeps arrival order.

import type { Extent } from "./vocabulary.ts";
import { NbdErr } from "./vocabulary.ts";
import type { Payload } from "./payload.ts";

export type MaybePromise<T> = T | Promise<T>;

/** A failed block operation, carrying the NBD error value the client will see. */
export class BlockError extends Error {
  constructor(
    readonly nbdError: number,
    message: string,
    opts?: { cause?: unknown },
  ) {
    super(message, opts);
    this.name = "BlockError";
  }
}

export interface BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  /** Fills `into` with `into.length` bytes from `offset`. */
  read(offset: number, into: Uint8Array): void;
  /** `data`: valid for this call's turn only (views into the socket's chunks); a write that waits copies it. */
  write(offset: number, data: Payload, fua: boolean): MaybePromise<void>;
  /**
   * Reads of the range return zeros afterwards. With `mayPunch` we punch a hole; without it
   * (NBD_CMD_FLAG_NO_HOLE) the range stays allocated, so later writes cannot fail for space.
   */
  zero(offset: number, length: number, fua: boolean, mayPunch: boolean): MaybePromise<void>;
  /** Like zero: we promise zeros after a trim, so a trim is recorded as a zero delta. */
  trim(offset: number, length: number, fua: boolean): MaybePromise<void>;
  /** Every write completed before the call is on stable storage when the promise resolves. */
  flush(): Promise<void>;
  /** Where [offset, offset + length) holds data and where holes (NBD_CMD_BLOCK_STATUS), at most `max` runs. */
  extents(offset: number, length: number, max?: number): Extent[];
  close(): void;
}

/** Forwards everything; a decorator overrides what it changes. */
export class BackendDecorator implements BlockBackend {
  constructor(protected readonly inner: BlockBackend) {}
  get size() {
    return this.inner.size;
  }
  get readOnly() {
    return this.inner.readOnly;
  }
  read(offset: number, into: Uint8Array): void {
    this.inner.read(offset, into);
  }
  write(offset: number, data: Payload, fua: boolean): MaybePromise<void> {
    return this.inner.write(offset, data, fua);
  }
  zero(offset: number, length: number, fua: boolean, mayPunch: boolean): MaybePromise<void> {
    return this.inner.zero(offset, length, fua, mayPunch);
  }
  trim(offset: number, length: number, fua: boolean): MaybePromise<void> {
    return this.inner.trim(offset, length, fua);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  extents(offset: number, length: number, max?: number): Extent[] {
    return this.inner.extents(offset, length, max);
  }
  close(): void {
    this.inner.close();
  }
}

/** Maps a system error from the file layer to the NBD error the client should see. */
export function nbdErrorFor(err: unknown): number {
  if (err instanceof BlockError) return err.nbdError;
  switch ((err as NodeJS.ErrnoException)?.code) {
    case "ENOSPC":
    case "EDQUOT":
      return NbdErr.ENOSPC;
    case "EPERM":
    case "EACCES":
    case "EROFS":
      return NbdErr.EPERM;
    case "ENOMEM":
      return NbdErr.ENOMEM;
    default:
      return NbdErr.EIO;
  }
}
