// Where a file's data is: lseek(2) with SEEK_DATA, through libc (Node's fs has no way).
// The bulk copy and the digests skip holes without reading them, so a thin 100 GiB disk
// holding 64 MiB costs what its data costs. The kernel reports data still in the page
// cache too, so a write that has not reached the disk is never taken for a hole. Any
// answer we cannot read as "no data here" is taken as data: reading a hole is slow,
// skipping data would be corruption.

import { dlopen, FFIType, read } from "bun:ffi";
import type { Extent } from "../block/vocabulary.ts";

export type { Extent } from "../block/vocabulary.ts";

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;

interface Libc {
  lseek(fd: number, offset: number, whence: number): number;
  errno(): number;
}

function loadLibc(): Libc | undefined {
  try {
    const libc = dlopen("libc.so.6", {
      lseek: { args: [FFIType.i32, FFIType.i64, FFIType.i32], returns: FFIType.i64 },
      __errno_location: { args: [], returns: FFIType.ptr },
    });
    return {
      lseek: (fd, offset, whence) => Number(libc.symbols.lseek(fd, offset, whence)),
      errno: () => read.i32(libc.symbols.__errno_location()!, 0),
    };
  } catch {
    return undefined; // not glibc: every range is taken as data
  }
}

const libc = loadLibc();

/**
 * The first offset at or after `offset` that holds data, or `end` if none does before it.
 * On any doubt (no libc, an error other than ENXIO) the answer is `offset`: data.
 */
export function nextData(fd: number, offset: number, end: number): number {
  if (!libc) return offset;
  const at = libc.lseek(fd, offset, SEEK_DATA);
  if (at >= 0) return Math.min(at, end);
  return libc.errno() === ENXIO ? end : offset;
}

/**
 * Hole tests for ranges asked in (mostly) ascending order, one lseek per data extent rather
 * than per range: a 100 GiB thin image's 102400 digest regions cost a handful of calls,
 * not 102400. The last answer (no data in [from, dataAt)) stands for any range starting
 * inside it; a range before it asks again.
 */
export class HoleFinder {
  private from = -1;
  private dataAt = -1;

  constructor(
    private readonly fd: number,
    private readonly size: number,
  ) {}

  /** True when [offset, offset + length) is a hole: it reads as zeros, and nothing need read it. */
  isHole(offset: number, length: number): boolean {
    if (!(this.from <= offset && offset <= this.dataAt)) {
      this.from = offset;
      this.dataAt = nextData(this.fd, offset, this.size);
    }
    return this.dataAt >= offset + length;
  }

  /** Drops the last answer: the next question asks the file system again. */
  forget(): void {
    this.from = -1;
    this.dataAt = -1;
  }

  /** Where data begins at or after `offset` (the size if none), as far as the last answer tells. */
  dataFrom(offset: number): number {
    this.isHole(offset, 0);
    return this.dataAt;
  }
}

/** The first offset at or after `offset` in a hole, or `end`. On any doubt: `end` (data). */
export function nextHole(fd: number, offset: number, end: number): number {
  if (!libc) return end;
  const at = libc.lseek(fd, offset, SEEK_HOLE);
  return at >= 0 ? Math.min(at, end) : end;
}

/** A run of the file: data, or a hole (reads as zeros). */

/** The runs of [offset, offset + length), in order, at most `max` of them (the last may stop short). */
export function extentsOf(fd: number, offset: number, length: number, max = 1024): Extent[] {
  const end = offset + length;
  const out: Extent[] = [];
  for (let at = offset; at < end && out.length < max; ) {
    const data = nextData(fd, at, end);
    if (data > at) {
      out.push({ length: data - at, hole: true });
      at = data;
      continue;
    }
    const hole = Math.max(nextHole(fd, at, end), at + 1);
    out.push({ length: Math.min(hole, end) - at, hole: false });
    at = hole;
  }
  return out;
}
