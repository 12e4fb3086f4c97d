// The hypervisor's part of a migration: moving the VM's memory and CPU state, joined to
// the disk's hand-off at one moment. That join is where data is lost or a VM ends up
// running twice, so each driver states where its point of no return lies.
//
//   source: prepare -> (bulk, deltas) -> moveMemory (deltas keep streaming) ->
//           [VM paused at the source, its writes flushed to our serve] ->
//           storage hand-off (fence, last deltas, destination verifies) -> complete
//   dest:   (image verified, held I/O released) -> release (the VM runs here)

import type { HypervisorError } from "./errors.ts";

export type HypervisorKind = "none" | "xl" | "qemu" | "libvirt";

/**
 * Where the VM can no longer come back to the source:
 *  - "fence": storage only; the disk's hand-off decides: once its barrier is out (just after
 *    the fence) the destination may release its copy, and before it a failure unfences here.
 *  - "memory-moved": `xl migrate` (or `virsh migrate`) returned: the domain exists only at the destination.
 *  - "complete": QEMU's migrate-continue; before it, the destination cannot run the VM.
 */
export type PointOfNoReturn = "fence" | "memory-moved" | "complete";

/**
 * Where the VM stands when a hand-off that a killed source left unfinished is taken up:
 *  - "can-roll-back": paused (or never moved) here; it may still go either way;
 *  - "must-complete": its memory has left; only the destination can run it now;
 *  - "runs-here": running here again (its migration failed or was cancelled).
 */
export type RecoveryState = "can-roll-back" | "must-complete" | "runs-here";

export interface MoveMemoryOptions {
  /**
   * Stop the VM before its memory moves (freeze-and-copy): it is copied once, stopped, as
   * the paper's baseline does, and a VM that dirties memory faster than the link needs no
   * convergence. Only drivers whose point of no return comes after the disk take it.
   */
  stopFirst?: boolean;
  /**
   * Called once, as soon as the driver sees the VM stop at the source (before its writes
   * are flushed): from then on its writes are only the ones in flight. Drivers that cannot
   * see the stop before moveMemory returns do not call it.
   */
  onStopped?: () => void;
  /** The link's rate as the deltas measured it (bytes/s): a slow one makes the memory's copy send less (memory-xbzrle.ts). */
  linkBytesPerSec?: number;
}

export interface SourceHypervisor {
  readonly kind: HypervisorKind;
  readonly pointOfNoReturn: PointOfNoReturn;
  /** Checks the VM is there and running, and sets up what the hand-off needs. Before any copying. */
  prepare(): Promise<void>;
  /**
   * Moves memory; resolves once the VM is paused at the source and its disk writes are
   * flushed to our serve (`pausedAt`, performance.now()). `whileWaiting` is called over
   * and over meanwhile, so deltas keep streaming.
   */
  moveMemory(whileWaiting: () => Promise<void>, opts?: MoveMemoryOptions): Promise<{ pausedAt: number }>;
  /**
   * While memory moves: keep the hypervisor from pausing the VM (true), or let it pause when
   * its memory fits (false). Drivers that cannot hold a pause back do not have it (xl).
   */
  holdPause?(hold: boolean): Promise<void>;
  /** The destination has verified the disk: let the VM run there. */
  complete(): Promise<void>;
  /**
   * Before the point of no return: the VM carries on at the source. A memory migration still
   * under way is stopped first, and waited for. Resolves with a stranded HypervisorError when
   * the VM then does not run at the source (its state named: exit 6, never "it runs here"),
   * else undefined.
   */
  abort(reason?: unknown): Promise<HypervisorError | undefined>;
  /** Looks at the VM after a source died mid hand-off; complete() or abort() follow. */
  recoverState(): Promise<RecoveryState>;
  close(): void;
}

export interface DestHypervisor {
  readonly kind: HypervisorKind;
  /** The VM's QEMU here opens its disk before release and may read it (the dest lets reads through, holds writes). */
  readonly readsBeforeRelease: boolean;
  /** The disk is verified and served: run the VM here; resolves when it runs, with that instant (wall clock, ms). */
  release(): Promise<{ runningAt: number }>;
  close(): void;
}
