// `serve` as a library: one image, its decorator stack, its NBD listener, its control API.
// `dest` reuses it as the VM's server on the new host once the image is consistent.
//
// The stack, outermost first, and why in this order:
//   Throttling  delays writes; must see every write, and must delay before the fence check
//   Fencing     checked when a write is applied, so a throttled write cannot slip past it
//   Recording   appends to the delta log in the same turn as the image write
//   File        the image

import { processAlive } from "../util/process.ts";
import { chmodSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { ServeError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { FencingBackend } from "./fencing.ts";
import { FileBackend } from "./file-backend.ts";
import { type Endpoint, formatEndpoint, NbdServer } from "./nbd-server.ts";
import { RecordingBackend, type RecordingState } from "./recording.ts";
import { ThrottlingBackend } from "./throttle.ts";
import { DoublingThrottlePolicy, type ThrottleParams, type ThrottleState } from "./throttle-policy.ts";
import { startControlApi, type ControlApi } from "./control-api.ts";

export interface DiskServiceOptions {
  image: string;
  name: string;
  runDir: string;
  nbd?: Endpoint;
  readOnly?: boolean;
  throttle?: Partial<ThrottleParams>;
  /** Hold every NBD request until this resolves (the destination, until consistent). */
  hold?: Promise<void>;
  /** While holding, answer reads (a QEMU destination probes its disk at start-up; nbd-server.ts). */
  holdWritesOnly?: boolean;
  log: Logger;
}

export type ServeMode = "normal" | "recording" | "fenced";

export interface ServeStatus {
  name: string;
  pid: number;
  image: string;
  size: number;
  readOnly: boolean;
  nbd: string;
  control: string;
  startedAt: string;
  mode: ServeMode;
  clients: number;
  connectionsTotal: number;
  io: NbdServer["stats"];
  recording: RecordingState & { owner?: number };
  throttle: ThrottleState & { queueLength: number; delayedWrites: number; totalDelayMs: number };
  fence: { fenced: boolean; refusedWrites: number };
  /** On a destination: how far the incoming migration is. */
  migration?: IncomingMigration;
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

export class DiskService {
  readonly file: FileBackend;
  readonly recording: RecordingBackend;
  readonly fencing: FencingBackend;
  readonly throttling: ThrottlingBackend;
  readonly nbd: NbdServer;
  readonly nbdEndpoint: Endpoint;
  readonly controlPath: string;
  private control?: ControlApi;
  private recordingOwner?: number;
  /** Set by dest: the receiver's progress, for `wanmig status` while the image arrives. */
  incoming?: () => IncomingMigration;
  private readonly startedAt = new Date();

  private constructor(readonly opts: DiskServiceOptions) {
    try {
      this.file = new FileBackend(opts.image, opts.readOnly ?? false);
    } catch (cause) {
      throw new ServeError(`cannot open image ${opts.image}`, { cause, hint: "the image must be an existing regular file (create one with truncate -s SIZE)" });
    }
    this.recording = new RecordingBackend(this.file, (msg) => opts.log.error(`record mode failed: ${msg}; a migration under way must abort`));
    this.fencing = new FencingBackend(this.recording);
    this.throttling = new ThrottlingBackend(this.fencing, new DoublingThrottlePolicy(opts.throttle));
    this.nbdEndpoint = opts.nbd ?? defaultNbdEndpoint(opts.runDir, opts.name);
    this.controlPath = controlSocketPath(opts.runDir, opts.name);
    this.nbd = new NbdServer({ name: opts.name, description: `wanmig ${opts.name}`, backend: this.throttling }, opts.log);
  }

  static async start(opts: DiskServiceOptions): Promise<DiskService> {
    try {
      mkdirSync(opts.runDir, { recursive: true, mode: 0o755 });
    } catch (cause) {
      throw new ServeError(`cannot create run directory ${opts.runDir}`, { cause, hint: "pass --run-dir DIR with a directory you can write" });
    }
    const svc = new DiskService(opts);
    try {
      // Control first: it claims the name on this host, so two servers never share one.
      svc.control = await startControlApi(svc.controlPath, svc);
      chmodSync(svc.controlPath, 0o600); // the control socket can fence the disk
      if (opts.hold) svc.nbd.hold(opts.hold, { reads: !opts.holdWritesOnly });
      await svc.nbd.listen(svc.nbdEndpoint);
    } catch (err) {
      svc.stop();
      throw err;
    }
    opts.log.info(
      `serving ${opts.image} (${svc.file.size} bytes${svc.file.readOnly ? ", read-only" : ""}) as ${JSON.stringify(opts.name)} on ${formatEndpoint(svc.nbdEndpoint)}; control ${svc.controlPath}`,
    );
    return svc;
  }

  get mode(): ServeMode {
    if (this.fencing.fenced) return "fenced";
    return this.recording.active ? "recording" : "normal";
  }

  /**
   * Starts record mode for the `source` process `owner`. A recording whose source is
   * still alive belongs to that migration: a second source would share its log and could
   * hand the disk to a second host, so it is refused. A dead owner's log is adopted.
   */
  startRecording(dir?: string, owner?: number): RecordingState & { owner?: number } {
    if (this.file.readOnly) throw new ServeError("a read-only export has no writes to record");
    const wasActive = this.recording.active;
    if (wasActive && this.recordingOwner !== undefined && owner !== this.recordingOwner && processAlive(this.recordingOwner))
      throw new ServeError(`a migration of ${this.opts.name} is already under way (source pid ${this.recordingOwner})`, {
        hint: "wait for it, or stop it; only one migration of a disk at a time",
      });
    this.recordingOwner = owner;
    const st = this.recording.start(dir ?? this.opts.runDir, this.opts.name);
    if (!wasActive) {
      this.throttling.policy.reset();
      this.throttling.counting = true;
      this.opts.log.info(`record mode on: delta log ${st.path}, first sequence ${st.firstSeq}`);
    }
    return { ...st, owner };
  }

  stopRecording(): RecordingState {
    this.recordingOwner = undefined;
    const st = this.recording.stop();
    this.throttling.counting = false;
    this.throttling.policy.reset();
    this.opts.log.info(`record mode off after ${st.records} deltas`);
    return st;
  }

  /** The source has shipped (or skipped) every delta up to `seq`: the throttle's queue shrinks. */
  noteShipped(seq: bigint): ThrottleState {
    const first = this.recording.state().firstSeq;
    if (first !== undefined && seq >= BigInt(first)) this.throttling.policy.noteShipped(Number(seq - BigInt(first) + 1n));
    return this.throttling.policy.state();
  }

    configureThrottle(params: Partial<ThrottleParams>): ThrottleState {
    this.throttling.policy.configure(params);
    return this.throttling.policy.state();
  }

  fence(): void {
    if (!this.fencing.fenced) this.opts.log.info("fenced: every later write is refused with EPERM");
    this.fencing.fence();
  }

  unfence(): void {
    if (this.fencing.fenced) this.opts.log.warn("unfenced: writes accepted again");
    this.fencing.unfence();
  }

  status(): ServeStatus {
    return {
      name: this.opts.name,
      pid: process.pid,
      image: this.opts.image,
      size: this.file.size,
      readOnly: this.file.readOnly,
      nbd: formatEndpoint(this.nbdEndpoint),
      control: this.controlPath,
      startedAt: this.startedAt.toISOString(),
      mode: this.mode,
      clients: this.nbd.clients,
      connectionsTotal: this.nbd.totalConnections,
      io: { ...this.nbd.stats },
      recording: { ...this.recording.state(), owner: this.recordingOwner },
      throttle: {
        ...this.throttling.policy.state(),
        queueLength: this.throttling.queueLength,
        delayedWrites: this.throttling.delayedWrites,
        totalDelayMs: Math.round(this.throttling.totalDelayMs),
      },
      fence: { fenced: this.fencing.fenced, refusedWrites: this.fencing.refused },
      migration: this.incoming?.(),
    };
  }

  stop(): void {
    this.nbd.stop();
    this.control?.stop();
    this.recording.stop();
    this.file.close();
  }
}
