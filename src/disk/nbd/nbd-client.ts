// A small pipelining NBD client (fixed newstyle, OPT_GO, simple replies) for our own
// tools: `wanmig workload` drives a served disk the way a VM would.

import type { Socket } from "bun";
import { ExitCode, WanmigError } from "../../errors.ts";
import { ByteQueue } from "../../util/byte-queue.ts";
import { whyNoAnswer } from "../../util/os-errors.ts";
import { SocketWriter } from "../../util/socket-writer.ts";
import { Cmd, IHAVEOPT, Info, NBDMAGIC, Opt, OPTION_REPLY_MAGIC, Rep, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC } from "./nbd-protocol.ts";

export class NbdClientError extends WanmigError {
  constructor(
    message: string,
    readonly nbdError = 0,
    hint?: string,
  ) {
    super(message, { exitCode: ExitCode.peerFailure, hint });
  }
}

interface Pending {
  resolve(data?: Uint8Array): void;
  reject(err: Error): void;
  readLength: number;
}

export class NbdClient {
  size = 0;
  private q = new ByteQueue();
  private wake?: () => void;
  private closed = false;
  private pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private transmission = false;
  private replyHeader?: { error: number; cookie: bigint };

  private constructor(private socket: Socket<unknown>) {
    this.out = new SocketWriter(socket);
  }

  static async connect(unixPath: string, exportName = ""): Promise<NbdClient> {
    let self!: NbdClient;
    const socket = await Bun.connect({
      unix: unixPath,
      socket: {
        data: (_s, d) => self.onData(d),
        drain: () => void self.out.drain(),
        close: () => self.onClose(),
        error: () => self.onClose(),
      },
    }).catch((cause) => {
      throw new NbdClientError(`cannot reach the NBD socket ${unixPath}: ${whyNoAnswer(unixPath, cause)}`, 0, "is `wanmig serve` running with this --name and --run-dir?");
    });
    self = new NbdClient(socket as Socket<unknown>);
    await self.handshake(exportName);
    return self;
  }

  private onData(d: Uint8Array): void {
    this.q.push(Uint8Array.from(d));
    if (this.transmission) this.drainReplies();
    else this.wake?.();
  }

  /** Partial socket writes are finished in order on drain. */
  private readonly out: SocketWriter;

  private onClose(): void {
    this.closed = true;
    this.wake?.();
    for (const p of this.pending.values()) p.reject(new NbdClientError("the server closed the connection"));
    this.pending.clear();
  }

  private async read(n: number): Promise<Buffer> {
    while (this.q.length < n) {
      if (this.closed) throw new NbdClientError("the server closed the connection during the handshake");
      await new Promise<void>((r) => (this.wake = r));
    }
    return Buffer.from(this.q.take(n));
  }

  private async handshake(name: string): Promise<void> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new NbdClientError("not an NBD server (bad greeting)");
    this.out.write(Buffer.from([0, 0, 0, 3]));
    const n = Buffer.from(name);
    const opt = Buffer.alloc(16 + 4 + n.length + 2);
    opt.writeBigUInt64BE(IHAVEOPT, 0);
    opt.writeUInt32BE(Opt.GO, 8);
    opt.writeUInt32BE(4 + n.length + 2, 12);
    opt.writeUInt32BE(n.length, 16);
    n.copy(opt, 20);
    this.out.write(opt);
    for (;;) {
      const h = await this.read(20);
      if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new NbdClientError("bad option reply");
      const type = h.readUInt32BE(12);
      const data = await this.read(h.readUInt32BE(16));
      if (type === Rep.ACK) break;
      if (type >= 0x80000000) throw new NbdClientError(`the server refused the export: ${data.toString()}`);
      if (type === Rep.INFO && data.readUInt16BE(0) === Info.EXPORT) this.size = Number(data.readBigUInt64BE(2));
    }
    this.transmission = true;
    this.drainReplies();
  }

  private drainReplies(): void {
    for (;;) {
      if (!this.replyHeader) {
        if (this.q.length < 16) return;
        const h = Buffer.from(this.q.take(16));
        if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) {
          this.socket.end();
          return this.onClose();
        }
        this.replyHeader = { error: h.readUInt32BE(4), cookie: h.readBigUInt64BE(8) };
      }
      const { error, cookie } = this.replyHeader;
      const p = this.pending.get(cookie);
      const need = p && !error ? p.readLength : 0;
      if (this.q.length < need) return;
      const data = need ? Buffer.from(this.q.take(need)) : undefined;
      this.replyHeader = undefined;
      if (!p) continue;
      this.pending.delete(cookie);
      if (error) p.reject(new NbdClientError(`server error ${error}`, error));
      else p.resolve(data);
    }
  }

  private request(type: number, offset: number, length: number, payload?: Uint8Array, flags = 0): Promise<Uint8Array | undefined> {
    if (this.closed) return Promise.reject(new NbdClientError("not connected"));
    const cookie = this.nextCookie++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { resolve, reject, readLength: type === Cmd.READ ? length : 0 });
      this.out.write(payload ? Buffer.concat([h, payload]) : h);
    });
  }

  async pread(offset: number, length: number): Promise<Uint8Array> {
    return (await this.request(Cmd.READ, offset, length))!;
  }

  async pwrite(offset: number, data: Uint8Array): Promise<void> {
    await this.request(Cmd.WRITE, offset, data.length, data);
  }

  async flush(): Promise<void> {
    await this.request(Cmd.FLUSH, 0, 0);
  }

  close(): void {
    if (!this.closed) this.socket.end();
    this.closed = true;
  }
}
