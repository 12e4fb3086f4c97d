// sync_file_range(2) and posix_fadvise(2) through libc: Node's fs has neither. They let a
// writer start the write-back of what it just wrote and, once it is on disk, hand its
// pages back to the kernel (write-behind.ts).

import { dlopen, FFIType } from "bun:ffi";

const SYNC_FILE_RANGE_WAIT_BEFORE = 1;
const SYNC_FILE_RANGE_WRITE = 2;
const SYNC_FILE_RANGE_WAIT_AFTER = 4;
const POSIX_FADV_DONTNEED = 4;

type Libc = {
  syncFileRange(fd: number, offset: number, length: number, flags: number): number;
  fadvise(fd: number, offset: number, length: number, advice: number): number;
};

function load(): Libc | undefined {
  try {
    const libc = dlopen("libc.so.6", {
      sync_file_range: { args: [FFIType.i32, FFIType.i64, FFIType.i64, FFIType.u32], returns: FFIType.i32 },
      posix_fadvise: { args: [FFIType.i32, FFIType.i64, FFIType.i64, FFIType.i32], returns: FFIType.i32 },
    });
    return {
      syncFileRange: (fd, offset, length, flags) => libc.symbols.sync_file_range(fd, offset, length, flags) as number,
      fadvise: (fd, offset, length, advice) => libc.symbols.posix_fadvise(fd, offset, length, advice) as number,
    };
  } catch {
    return undefined; // not glibc: pages stay cached, as without these calls
  }
}

const libc = load();

/** Starts writing the range back (does not wait); false when the system cannot. */
export function startWriteback(fd: number, offset: number, length: number): boolean {
  return libc?.syncFileRange(fd, offset, length, SYNC_FILE_RANGE_WRITE) === 0;
}

/**
 * Waits until the range is written back, then drops its pages from the page cache. Not a
 * durability point (no metadata, no device flush): the image's fdatasync stays that.
 */
export function writeBackAndDrop(fd: number, offset: number, length: number): boolean {
  if (!libc) return false;
  if (libc.syncFileRange(fd, offset, length, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) !== 0) return false;
  return libc.fadvise(fd, offset, length, POSIX_FADV_DONTNEED) === 0;
}
