// The image file itself: positional reads and writes on one descriptor, holes for zeros.

import { closeSync, fdatasync, fstatSync, openSync, readSync, writeSync, writevSync } from "node:fs";
import { type Extent, extentsOf, HoleFinder } from "./extents.ts";
import { BlockError, type BlockBackend } from "../block/backend.ts";
import { NbdErr } from "../block/vocabulary.ts";
import { punchHole, zeroRange } from "./fallocate.ts";
import { startWriteback, writeBackAndDrop } from "./page-cache.ts";
import type { PageCacheOps } from "./write-behind.ts";
import { type Payload, payloadLength, slicePayload } from "../block/payload.ts";

const ZERO_CHUNK = new Uint8Array(1 << 20);

export class FileBackend implements BlockBackend {
  readonly size: number;
  private fd: number;

  constructor(
    readonly path: string,
    readonly readOnly: boolean,
  ) {
    this.fd = openSync(path, readOnly ? "r" : "r+");
    const st = fstatSync(this.fd);
    if (!st.isFile()) {
      closeSync(this.fd);
      throw new Error(`${path} is not a regular file`);
    }
    this.size = st.size;
  }

  extents(offset: number, length: number, max?: number): Extent[] {
    return extentsOf(this.fd, offset, length, max);
  }

  /** Hole tests on this file, for a reader that moves forward through it (the bulk copy). */
  holeFinder(): HoleFinder {
    return new HoleFinder(this.fd, this.size);
  }

  read(offset: number, into: Uint8Array): void {
    let done = 0;
    while (done < into.length) {
      const n = readSync(this.fd, into, done, into.length - done, offset + done);
      if (n === 0) throw new BlockError(NbdErr.EIO, `short read at ${offset + done}: the image shrank under us`);
      done += n;
    }
  }

  write(offset: number, data: Payload, fua: boolean): void | Promise<void> {
    if (data instanceof Uint8Array) for (let done = 0; done < data.length; ) done += writeSync(this.fd, data, done, data.length - done, offset + done);
    else {
      const length = payloadLength(data);
      const done = writevSync(this.fd, data as Uint8Array[], offset);
      // A short writev (rare: a signal, a nearly full disk) is finished from where it stopped.
      if (done < length) this.write(offset + done, slicePayload(data, done, length), false);
    }
    if (fua) return this.flush();
  }

  zero(offset: number, length: number, fua: boolean, mayPunch: boolean): void | Promise<void> {
    const done = mayPunch ? punchHole(this.fd, offset, length) : zeroRange(this.fd, offset, length);
    if (!done) this.writeZeros(offset, length);
    if (fua) return this.flush();
  }

  trim(offset: number, length: number, fua: boolean): void | Promise<void> {
    return this.zero(offset, length, fua, true);
  }

  /** The page cache of this file, for a writer that drops what it wrote (write-behind.ts). */
  pageCache(): PageCacheOps {
    return {
      startWriteback: (offset, length) => void startWriteback(this.fd, offset, length),
      writeBackAndDrop: (offset, length) => void writeBackAndDrop(this.fd, offset, length),
    };
  }

  flush(): Promise<void> {
    return new Promise((resolve, reject) => fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  private writeZeros(offset: number, length: number): void {
    for (let done = 0; done < length; ) {
      const n = Math.min(ZERO_CHUNK.length, length - done);
      done += writeSync(this.fd, ZERO_CHUNK, 0, n, offset + done);
    }
  }
}
