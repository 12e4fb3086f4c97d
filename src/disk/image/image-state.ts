// What must outlive any one process that serves an image: that it is fenced, that a
// migration records its writes, and (on a destination) how far an incoming migration got.
// It lives beside the image as IMAGE.wanmig.json, so it goes wherever the image goes and
// every later `serve` or `dest` of that image reads it before it answers any request.
//
// Durability: each change is written to a temporary file, fsynced, renamed over the old
// one, and the directory fsynced, all before the call that changed it returns. So a fence
// that was acknowledged survives SIGKILL, a restart and a power cut.
//
// A VM with several disks (image-set.ts) has one state, written beside every one of its
// images: disk0's file first, then the others. disk0's is the one read, with one exception
// that keeps a crash between two files safe: a fence found on any disk holds for all. The
// state names the set (`disks`), so a log or a position that counts in the set's space is
// never applied to one of its images served alone, or to the images in another order.

import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { type ImageRef, imagePaths } from "./image-set.ts";
import { ServeError } from "../../errors.ts";

export interface FenceMarker {
  since: string;
  reason: string;
  /** The recording whose hand-off fenced the image, if a migration did. */
  recording?: string;
}

export interface RecordingMarker {
  /** The first log's file name: the recording's identity on both hosts. */
  id: string;
  /** The recording's delta log: a serve restarted while recording goes on appending to it. */
  log: string;
  owner?: number;
  startedAt: string;
  /** Logs are only trusted across a process restart, not a reboot (their tail may be lost). */
  bootId: string;
  /** How many times a serve restarted and went on with this recording. */
  restarts?: number;
  /** The log's bound in bytes (log-bound.ts), kept across a restart. */
  maxLogBytes?: number;
}

/** A finished hand-off at the source: the image moved away for good. */
export interface MovedMarker {
  recording: string;
  at: string;
  digest?: string;
  /** Where the VM went, as the source named it (`--to`). */
  to?: string;
}

/** On a destination: the incoming migration, with the positions that are durable in the image. */
export interface IncomingMarker {
  name: string;
  recording: string;
  size: number;
  /** A VM with several disks: their sizes in order (HELLO's). */
  disks?: number[];
  blockSize: number;
  bulkOffset: number;
  bulkDone: boolean;
  nextSeq: string;
  state: "receiving" | "verified" | "abandoned";
  digest?: string;
  at: string;
}

export interface ImageState {
  version: 1;
  fence?: FenceMarker;
  recording?: RecordingMarker;
  moved?: MovedMarker;
  incoming?: IncomingMarker;
  /** Recordings whose copy here was given up: never released, whoever asks. */
  abandoned?: string[];
  /** Several disks: the images of the set, in order (absolute paths). */
  disks?: string[];
}

const STATE_SUFFIX = ".wanmig.json";

/**
 * An incoming migration this image received, and then sent on: the VM moved away from here
 * after it arrived (a `moved` marker no older than the incoming one). That incoming record
 * is history, not "I serve a completed migration": the image is a base for the next
 * incoming migration of the VM (the way back). A hand-off away drops the record itself
 * (disk-service.ts stopRecording); this also reads the files written before it did.
 */
export function withoutSupersededIncoming(s: ImageState): ImageState {
  if (s.incoming && s.moved && s.moved.at >= s.incoming.at) {
    const { incoming: _, ...rest } = s;
    return rest;
  }
  return s;
}

export function stateFilePath(image: string): string {
  return `${image}${STATE_SUFFIX}`;
}

function writeDurably(path: string, text: string): void {
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, "w", 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  fsyncDir(dirname(path));
}

let bootIdCache: string | undefined;
export function bootId(): string {
  try {
    bootIdCache ??= readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    bootIdCache = "unknown";
  }
  return bootIdCache;
}

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export class ImageStateFile {
  readonly path: string;
  private readonly paths: string[];
  private current: ImageState;

  constructor(images: ImageRef) {
    this.paths = imagePaths(images).map(stateFilePath);
    this.path = this.paths[0]!;
    this.current = ImageStateFile.read(images);
  }

  /** The state of an image, or of a VM's images (see the header). */
  static read(images: ImageRef): ImageState {
    const paths = imagePaths(images);
    const set = paths.length > 1 ? paths.map((p) => resolve(p)) : undefined;
    const states = paths.map((p) => ImageStateFile.readOne(p));
    const state = states[0]!;
    states.forEach((s, i) => {
      const was = s.disks?.join(" + ");
      const carriesPositions = s.recording || (s.incoming && s.incoming.state !== "abandoned");
      if (carriesPositions && was !== set?.join(" + "))
        throw new ServeError(`${paths[i]} holds a migration's state for ${was ? `the disks ${was}` : "itself alone"}`, {
          hint: `serve or receive ${was ? "those images together, in that order (--image once per disk)" : "it alone"}, as the migration began`,
        });
    });
    const fence = state.fence ?? states.find((s) => s.fence)?.fence;
    if (fence) state.fence = fence;
    return state;
  }

  private static readOne(image: string): ImageState {
    const path = stateFilePath(image);
    if (!existsSync(path)) return { version: 1 };
    let v: unknown;
    try {
      v = JSON.parse(readFileSync(path, "utf8"));
    } catch (cause) {
      // Never guess: a state we cannot read may be a fence.
      throw new ServeError(`cannot read ${path}`, { cause });
    }
    if (!v || typeof v !== "object" || (v as ImageState).version !== 1) throw new ServeError(`${path} is not a wanmig image state (version 1)`);
    return withoutSupersededIncoming(v as ImageState);
  }

  get state(): Readonly<ImageState> {
    return this.current;
  }

  /** Applies `change` to a copy and makes it durable; the new state only counts once on disk. */
  update(change: (s: ImageState) => void): ImageState {
    const next: ImageState = structuredClone(this.current);
    change(next);
    if (this.paths.length > 1) next.disks = this.paths.map((p) => resolve(p.slice(0, -STATE_SUFFIX.length)));
    else delete next.disks;
    for (const path of this.paths) writeDurably(path, `${JSON.stringify(next, null, 1)}\n`);
    this.current = next;
    return next;
  }
}
