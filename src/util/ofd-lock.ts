// Open-file-description (OFD) byte locks through libc: they belong to an open file
// description, not a process, so two opens in one process conflict as two processes do, and
// the kernel drops them when the description closes or the process dies, however it dies.
// The image lock (QEMU's scheme) and the host-wide move groups are both built on them.

import { dlopen, FFIType, ptr } from "bun:ffi";

const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
export const F_RDLCK = 0;
export const F_WRLCK = 1;
const F_UNLCK = 2;
const SEEK_SET = 0;

type Fcntl = (fd: number, cmd: number, arg: number) => number;

function loadFcntl(): Fcntl | undefined {
  try {
    const libc = dlopen("libc.so.6", { fcntl: { args: [FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 } });
    return (fd, cmd, arg) => libc.symbols.fcntl(fd, cmd, arg as never) as number;
  } catch {
    return undefined;
  }
}

const fcntl = loadFcntl();

/** False where libc cannot be reached (not glibc): callers decide what no locks means. */
export const ofdLocksAvailable = fcntl !== undefined;

/** struct flock on x86-64/aarch64 Linux: short type, short whence, (pad), off_t start, off_t len, pid_t pid, (pad). */
function flock(type: number, start: number): { buf: Buffer; view: DataView } {
  const buf = Buffer.alloc(32);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  view.setInt16(0, type, true);
  view.setInt16(2, SEEK_SET, true);
  view.setBigInt64(8, BigInt(start), true);
  view.setBigInt64(16, 1n, true);
  return { buf, view };
}

/** True when another open file description holds a lock on `byte` that an exclusive lock would meet. */
export function someoneHolds(fd: number, byte: number): boolean {
  const { buf, view } = flock(F_WRLCK, byte);
  if (fcntl!(fd, F_OFD_GETLK, ptr(buf) as unknown as number) !== 0) throw new Error(`fcntl(F_OFD_GETLK) failed on byte ${byte}`);
  return view.getInt16(0, true) !== F_UNLCK;
}

/** Takes a lock on `byte` without waiting: false when another description holds a conflicting one. */
export function lockByte(fd: number, byte: number, type: typeof F_RDLCK | typeof F_WRLCK = F_RDLCK): boolean {
  const { buf } = flock(type, byte);
  return fcntl!(fd, F_OFD_SETLK, ptr(buf) as unknown as number) === 0;
}

export function unlockByte(fd: number, byte: number): void {
  const { buf } = flock(F_UNLCK, byte);
  fcntl!(fd, F_OFD_SETLK, ptr(buf) as unknown as number);
}
