// The NBD listener: unix or TCP socket, many clients at once, a VM's disks as its exports
// (disk0, disk1, ...; "" and the VM's own name mean disk0, as they did when a VM had one).

import type { Socket, SocketListener } from "bun";
import { existsSync, statSync, unlinkSync } from "node:fs";
import { type ConnectionHost, NbdConnection, type NbdExport, type NbdStats, newStats } from "./nbd-connection.ts";
import type { Logger } from "../../log.ts";
import { BLOCK_MAX } from "./nbd-protocol.ts";
import { ServeError } from "../../errors.ts";
import { listenError } from "../../util/os-errors.ts";

export type Endpoint = { kind: "unix"; path: string } | { kind: "tcp"; host: string; port: number };

export function parseEndpoint(spec: string): Endpoint {
  if (spec.startsWith("unix:")) return { kind: "unix", path: spec.slice(5) };
  if (spec.startsWith("/")) return { kind: "unix", path: spec };
  const m = /^tcp:(.*):(\d+)$/.exec(spec);
  if (m) {
    const host = m[1]!.replace(/^\[(.*)\]$/, "$1");
    const port = Number(m[2]);
    if (port <= 65535) return { kind: "tcp", host, port };
  }
  throw new ServeError(`cannot parse endpoint ${JSON.stringify(spec)}`, {
    hint: "use unix:/path/to/socket or tcp:HOST:PORT",
    exitCode: 2,
  });
}

export function formatEndpoint(e: Endpoint): string {
  return e.kind === "unix" ? `unix:${e.path}` : `tcp:${e.host.includes(":") ? `[${e.host}]` : e.host}:${e.port}`;
}

/** Whether a server listens on the unix socket at `path` (a leftover file does not). */
export async function unixPathAnswers(path: string): Promise<boolean> {
  if (!existsSync(path)) return false;
  return Bun.connect({ unix: path, socket: { data() {}, open(s) { s.end(); } } }).then(
    () => true,
    () => false,
  );
}

/**
 * A unix socket path that exists may belong to a live server (refuse: the name is
 * served already) or be left over from a crash (remove it).
 */
export async function claimUnixPath(path: string, what: string): Promise<void> {
  let st;
  try {
    st = statSync(path);
  } catch {
    return;
  }
  // Never remove what is not a socket: `--nbd unix:IMAGE` must not delete the image.
  if (!st.isSocket()) throw new ServeError(`${what} ${path} exists and is not a socket`, { hint: "pick another path: only a leftover socket is replaced" });
  if (await unixPathAnswers(path)) throw new ServeError(`${what} ${path} is in use by a running server`, { hint: "is this name already served on this host? see `wanmig status`" });
  unlinkSync(path);
}

interface SocketData {
  conn?: NbdConnection;
}

export class NbdServer implements ConnectionHost {
  private listener?: SocketListener<SocketData>;
  private readonly connections = new Set<NbdConnection>();
  private holdUntil?: Promise<void>;
  private holdReads = true;
  totalConnections = 0;

  constructor(
    private readonly exports: readonly NbdExport[],
    /** Names that also mean the first export (besides ""). */
    private readonly aliases: readonly string[],
    readonly log: Logger,
    readonly maxRequest = BLOCK_MAX,
  ) {}

  /** Every export's requests, added up. */
  get stats(): NbdStats {
    const sum = newStats();
    for (const ex of this.exports) for (const k of Object.keys(sum) as (keyof NbdStats)[]) sum[k] += ex.stats[k];
    return sum;
  }

  get clients(): number {
    return this.connections.size;
  }

  findExport(name: string): NbdExport | undefined {
    if (name === "" || this.aliases.includes(name)) return this.exports[0];
    return this.exports.find((ex) => ex.name === name);
  }

  listExports(): readonly NbdExport[] {
    return this.exports;
  }

  gate(read: boolean): Promise<void> | undefined {
    return read && !this.holdReads ? undefined : this.holdUntil;
  }

  /**
   * Holds every request until `release` resolves (the destination, before it is
   * consistent). With `reads: false` only writes are held: a QEMU waiting for an incoming
   * migration opens its NBD disk and reads it at start-up, long before the hand-off; held,
   * that read would stall QEMU and the migration with it. It runs no guest until the
   * migration completes, which is after the release, so no guest sees those reads.
   */
  hold(release: Promise<void>, opts: { reads?: boolean } = {}): void {
    this.holdReads = opts.reads ?? true;
    const held = release.finally(() => {
      if (this.holdUntil === held) this.holdUntil = undefined;
    });
    this.holdUntil = held;
  }

  async listen(endpoint: Endpoint): Promise<void> {
    const handlers = {
      open: (s: Socket<SocketData>) => {
        const peer = endpoint.kind === "unix" ? `unix#${++this.totalConnections}` : `${s.remoteAddress}#${++this.totalConnections}`;
        const conn = new NbdConnection(s as Socket<unknown>, this, peer);
        s.data = { conn };
        this.connections.add(conn);
        if (endpoint.kind === "tcp") s.setNoDelay(true);
        conn.open();
      },
      data: (s: Socket<SocketData>, chunk: Uint8Array) => s.data.conn?.onData(chunk),
      drain: (s: Socket<SocketData>) => s.data.conn?.onDrain(),
      close: (s: Socket<SocketData>) => this.dropConnection(s),
      error: (s: Socket<SocketData>, err: Error) => {
        this.log.debug(`socket error: ${err.message}`);
        this.dropConnection(s);
      },
    };
    try {
      if (endpoint.kind === "unix") {
        await claimUnixPath(endpoint.path, "NBD socket");
        this.listener = Bun.listen<SocketData>({ unix: endpoint.path, socket: handlers, data: {} });
      } else {
        this.listener = Bun.listen<SocketData>({ hostname: endpoint.host, port: endpoint.port, socket: handlers, data: {} });
      }
    } catch (cause) {
      if (cause instanceof ServeError) throw cause;
      throw listenError(cause, endpoint.kind === "unix" ? { path: endpoint.path } : endpoint, "cannot listen for NBD on");
    }
  }

  stop(): void {
    this.listener?.stop(true);
    this.listener = undefined;
  }

  private dropConnection(s: Socket<SocketData>): void {
    const conn = s.data?.conn;
    if (!conn) return;
    conn.onClose();
    this.connections.delete(conn);
  }
}
