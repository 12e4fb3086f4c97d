// One persistent QMP connection to a QEMU (its JSON protocol over a unix socket): the
// greeting, qmp_capabilities, then commands answered in order, with events in between.
// One connection per QEMU, kept for the whole migration: spawning a client per command
// costs 50-100 ms each, which would be downtime at the switchover.

import type { Socket } from "bun";
import { ExitCode, WanmigError } from "../errors.ts";
import type { Logger } from "../log.ts";

export class QmpError extends WanmigError {
  constructor(message: string, opts: { cause?: unknown; hint?: string } = {}) {
    super(message, { exitCode: ExitCode.peerFailure, ...opts });
  }
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/** "unix:/path" or a bare path. */
export function qmpSocketPath(spec: string): string {
  return spec.startsWith("unix:") ? spec.slice(5) : spec;
}

export class QmpClient {
  private buf = "";
  private greeted?: () => void;
  private readonly pending: Pending[] = [];
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private closed = false;

  private constructor(
    private socket: Socket<undefined> | undefined,
    readonly path: string,
    private readonly log: Logger,
  ) {}

  static async connect(spec: string, log: Logger, timeoutMs = 10_000): Promise<QmpClient> {
    const path = qmpSocketPath(spec);
    let client!: QmpClient;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const greeting = new Promise<void>((resolve, reject) => {
      client = new QmpClient(undefined, path, log);
      client.greeted = resolve;
      timer = setTimeout(() => reject(new QmpError(`no QMP greeting on ${path} within ${timeoutMs} ms`)), timeoutMs);
    });
    // A connection that fails leaves the greeting unawaited: its timer must not fire later
    // as an unhandled rejection (that would end the whole process, mid-migration).
    greeting.catch(() => undefined).finally(() => clearTimeout(timer));
    try {
      client.socket = await Bun.connect({
        unix: path,
        socket: {
          data: (_s, d) => client.onData(new TextDecoder().decode(d)),
          close: () => client.onClose(),
          error: (_s, err) => client.onClose(err),
        },
      });
    } catch (cause) {
      clearTimeout(timer);
      throw new QmpError(`cannot connect to QMP at ${path}`, { cause, hint: "start QEMU with -qmp unix:PATH,server=on,wait=off" });
    }
    try {
      await greeting;
    } catch (err) {
      client.close();
      throw err;
    }
    await client.execute("qmp_capabilities");
    return client;
  }

  /** Runs one command; resolves with its "return", rejects with QEMU's error description. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new QmpError(`QMP connection to ${this.path} is closed (did QEMU exit?)`));
    this.log.debug(`qmp ${this.path}: ${command} ${args ? JSON.stringify(args) : ""}`);
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ command, resolve: resolve as (v: unknown) => void, reject });
      this.socket!.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  /** Calls `fn` for every event from now on; returns a function that stops it. */
  onEvent(fn: (e: QmpEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  close(): void {
    this.closed = true;
    this.socket?.end();
  }

  private onData(text: string): void {
    this.buf += text;
    for (let nl = this.buf.indexOf("\n"); nl >= 0; nl = this.buf.indexOf("\n")) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(line);
    } catch {
      this.log.warn(`qmp ${this.path}: not JSON: ${line.slice(0, 200)}`);
      return;
    }
    if ("QMP" in m) return this.greeted?.();
    if ("event" in m) {
      for (const fn of this.listeners) fn(m as unknown as QmpEvent);
      return;
    }
    const p = this.pending.shift();
    if (!p) return;
    if ("error" in m) {
      const e = m.error as { class?: string; desc?: string };
      p.reject(new QmpError(`QEMU refused ${p.command}: ${e.desc ?? e.class ?? "error"}`));
    } else p.resolve(m.return);
  }

  private onClose(err?: Error): void {
    this.closed = true;
    for (const p of this.pending.splice(0)) p.reject(new QmpError(`QMP connection to ${this.path} closed during ${p.command}`, { cause: err }));
  }
}
