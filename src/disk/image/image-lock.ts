// Exclusive ownership of an image, in QEMU's own locking scheme, so that QEMU, qemu-img,
// qemu-io and a second wanmig all see who holds it.
//
// QEMU's `file` driver (block/file-posix.c) takes shared open-file-description (OFD) locks
// on single bytes of the image: byte 100+i for each permission bit i it holds, byte 200+i
// for each permission bit i it does not let others hold. Before it takes them it tests
// (F_OFD_GETLK, as if for an exclusive lock) 200+i for every permission it wants and
// 100+i for every permission it refuses to share; a lock found there is "Failed to get
// "write" lock". Permission bits: 0 consistent read, 1 write, 2 write unchanged, 3 resize.
//
// We hold consistent read and write (read only with --read-only) and share neither write
// nor resize: nobody else may change the bytes we record, fence and serve. OFD locks
// belong to the open file description, not the process, so two opens in one process
// conflict too: one lock per image per process, held on a descriptor of its own, and
// released by the kernel when the process dies (a SIGKILLed serve never leaves it stale).

import { closeSync, openSync } from "node:fs";
import { lockByte, ofdLocksAvailable, someoneHolds } from "../../util/ofd-lock.ts";

const PERM_BASE = 100;
const SHARED_BASE = 200;
export const Perm = { consistentRead: 0, write: 1, writeUnchanged: 2, resize: 3 } as const;
const PERM_NAMES = ["consistent read", "write", "write unchanged", "resize"];

export class ImageLockError extends Error {}

export interface ImageLock {
  readonly path: string;
  release(): void;
}

/**
 * Takes the image as QEMU would for a writer that shares nothing that changes it, or for a
 * reader with `readOnly`. Throws ImageLockError naming the permission someone else holds.
 */
export function lockImage(path: string, opts: { readOnly?: boolean } = {}): ImageLock {
  if (!ofdLocksAvailable) return { path, release() {} }; // not glibc: no locks to speak, like QEMU built without OFD
  const fd = openSync(path, "r");
  try {
    const held = opts.readOnly ? [Perm.consistentRead] : [Perm.consistentRead, Perm.write];
    const unshared = [Perm.write, Perm.resize];
    // Lock first, then test, as QEMU does: two starting at once each see the other's
    // locks (an OFD lock never conflicts with its own description), so one of them fails.
    for (const p of held) if (!lockByte(fd, PERM_BASE + p)) throw new ImageLockError(`cannot lock byte ${PERM_BASE + p} of ${path}`);
    for (const p of unshared) if (!lockByte(fd, SHARED_BASE + p)) throw new ImageLockError(`cannot lock byte ${SHARED_BASE + p} of ${path}`);
    for (const p of held)
      if (someoneHolds(fd, SHARED_BASE + p)) throw new ImageLockError(`Failed to get "${PERM_NAMES[p]}" lock: another process holds ${path} and does not share it`);
    for (const p of unshared)
      if (someoneHolds(fd, PERM_BASE + p)) throw new ImageLockError(`Failed to get shared "${PERM_NAMES[p]}" lock: another process has ${path} open for ${PERM_NAMES[p]}`);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  let open = true;
  return {
    path,
    release() {
      if (open) closeSync(fd); // closing the description drops its OFD locks
      open = false;
    },
  };
}
