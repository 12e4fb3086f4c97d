// What must outlive any one process that serves an image: that it is fenced, that a
// migration records its writes, and (on a destination) how far an incoming migration got.
// It lives beside the image as IMAGE.wanmig.json, so it goes wherever the image goes and
// every later `serve` or `dest` of that image reads it before it answers any request.
//
// Durability: each change is written to a temporary file, fsynced, renamed over the old
// one, and the directory fsynced, all before the call that changed it returns. So a fence
// that was acknowledged survives SIGKILL, a restart and a power cut.

import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import { dirname } from "node:path";
import { ServeError } from "../errors.ts";

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
}

/** On a destination: the incoming migration, with the positions that are durable in the image. */
export interface IncomingMarker {
  name: string;
  recording: string;
  size: number;
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
}

export function stateFilePath(image: string): string {
  return `${image}.wanmig.json`;
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
  private current: ImageState;

  constructor(readonly image: string) {
    this.path = stateFilePath(image);
    this.current = ImageStateFile.read(image);
  }

  static read(image: string): ImageState {
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
    return v as ImageState;
  }

  get state(): Readonly<ImageState> {
    return this.current;
  }

  /** Applies `change` to a copy and makes it durable; the new state only counts once on disk. */
  update(change: (s: ImageState) => void): ImageState {
    const next: ImageState = structuredClone(this.current);
    change(next);
    const tmp = `${this.path}.tmp`;
    const fd = openSync(tmp, "w", 0o600);
    try {
      writeSync(fd, `${JSON.stringify(next, null, 1)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    fsyncDir(dirname(this.path));
    this.current = next;
    return next;
  }
}
