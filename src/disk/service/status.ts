// What a serve says about itself (GET /v1/status) and the paths of its sockets: the one
// vocabulary that the service, its control API, its metrics and every client share, so that
// none of them imports another to learn it.

import { join } from "node:path";
import type { DiskPlace } from "../image/image-set.ts";
import type { NbdStats } from "../nbd/nbd-connection.ts";
import type { Endpoint, NbdServer } from "../nbd/nbd-server.ts";
import type { RecordingState } from "../recording/recording.ts";
import type { ThrottleState } from "../throttle/throttle-policy.ts";

/** How a recording starts (the control API's "start"). */
export interface RecordingStart {
  /** Where the log goes (default: the run directory). */
  dir?: string;
  /** The pid of the source process the recording is for: a second one is refused while it lives. */
  owner?: number;
  maxLogBytes?: number;
  /** Bytes/s the VM's writes are held to from the first one (the bulk throttle's provisional cap). */
  rateCap?: number;
  /** The bulk copy's cursor from the first write (recording.ts; raised later by "cursor"). */
  bulkCursor?: number;
  /** Writes behind the cursor logged as ranges, without their bytes (recording.ts). */
  ranges?: boolean;
}

export type ServeMode = "normal" | "recording" | "fenced";

/**
 * Where this image stands in a hand-off, for `status`:
 *  - fenced: fenced by a control request, no migration named;
 *  - unfinished: fenced by a migration whose hand-off never completed (run `wanmig source` again);
 *  - moved: the hand-off completed, the VM's disk lives elsewhere now;
 *  - receiving: a destination, before its copy is verified (I/O held);
 *  - verified: a destination whose copy is verified and served.
 */
export type HandoffState = "none" | "fenced" | "unfinished" | "moved" | "receiving" | "verified";
/** One disk of the VM: its export, where it lies in the VM's space, and its own requests. */
export interface DiskStatus extends DiskPlace {
  export: string;
  io: NbdStats;
}

export interface ServeStatus {
  name: string;
  pid: number;
  /** The image, or "A + B" for several (`disks` has each). */
  image: string;
  /** All the disks' bytes. */
  size: number;
  disks: DiskStatus[];
  readOnly: boolean;
  nbd: string;
  control: string;
  startedAt: string;
  mode: ServeMode;
  clients: number;
  /** The largest NBD request advertised (serve --max-request): with a client's queue depth, what a VM can hold in flight. */
  maxRequest?: number;
  connectionsTotal: number;
  io: NbdServer["stats"];
  /** A new value every time a serve process starts: the migrating source notices a restart by it. */
  instance: string;
  recording: RecordingState & { owner?: number; id?: string; applied: number; restarts?: number };
  handoff: { state: HandoffState; recording?: string; to?: string; since?: string; reason?: string; text: string };
  /** The VM's disk here in one word (vmState): what an evacuation reads. */
  state: VmState;
  throttle: ThrottleState & { rateCapBytesPerSec?: number; queueLength: number; heldBytes: number; delayedWrites: number; totalDelayMs: number; vmStopped: boolean; pauseDrain?: { writes: number; bytes: number } };
  fence: { fenced: boolean; refusedWrites: number; since?: string; reason?: string };
  /** On a destination: how far the incoming migration is. */
  migration?: IncomingMigration;
}

/**
 * The VM's disk on this host in one word: serving (writable here), recording (a migration
 * away is under way), moved (fenced for good: the VM runs at `handoff.to`), unfinished (a
 * hand-off to finish: run the migration again), fenced (by hand, no migration), receiving
 * (a destination whose copy is not verified yet).
 */
export type VmState = "serving" | "recording" | "moved" | "unfinished" | "fenced" | "receiving";

export function vmState(mode: ServeMode, handoff: HandoffState): VmState {
  if (handoff === "moved" || handoff === "unfinished" || handoff === "fenced" || handoff === "receiving") return handoff;
  return mode === "recording" ? "recording" : "serving";
}

/** The images of a served VM, in disk order: what the source reads. */
export function servedImages(st: Pick<ServeStatus, "disks">): string[] {
  return st.disks.map((d) => d.image);
}

/** HELLO's `disks`: each disk's size when the VM has several (protocol.ts). */
export function offeredDisks(st: Pick<ServeStatus, "disks">): number[] | undefined {
  return st.disks.length > 1 ? st.disks.map((d) => d.size) : undefined;
}

export interface IncomingMigration {
  state: string;
  bulkOffset: number;
  size: number;
  nextSeq: string;
}


export function defaultNbdEndpoint(runDir: string, name: string): Endpoint {
  return { kind: "unix", path: join(runDir, `${name}.nbd`) };
}

export function controlSocketPath(runDir: string, name: string): string {
  return join(runDir, `${name}.ctl`);
}
