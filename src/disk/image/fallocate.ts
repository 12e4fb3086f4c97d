// fallocate(2) through libc: Node's fs has no way to punch a hole, and writing zeros
// would allocate the very blocks a sparse image is meant to keep free.

import { dlopen, FFIType } from "bun:ffi";

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;

type Fallocate = (fd: number, mode: number, offset: number, length: number) => number;

function loadFallocate(): Fallocate | undefined {
  try {
    const libc = dlopen("libc.so.6", {
      fallocate: { args: [FFIType.i32, FFIType.i32, FFIType.i64, FFIType.i64], returns: FFIType.i32 },
    });
    return (fd, mode, offset, length) => libc.symbols.fallocate(fd, mode, offset, length) as number;
  } catch {
    return undefined; // not glibc: callers fall back to writing zeros
  }
}

const fallocate = loadFallocate();

/** Deallocates the range (reads return zeros); false when the file system cannot. */
export function punchHole(fd: number, offset: number, length: number): boolean {
  return fallocate?.(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) === 0;
}

/** Zeros the range and keeps it allocated; false when the file system cannot. */
export function zeroRange(fd: number, offset: number, length: number): boolean {
  return fallocate?.(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length) === 0;
}
