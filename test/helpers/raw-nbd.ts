// A minimal NBD client written from the spec, for requests that libnbd refuses to send
// (unknown commands, out-of-range offsets, half-written payloads).
import { Cmd, IHAVEOPT, NBDMAGIC, Opt, OPTION_REPLY_MAGIC, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from "../../src/disk/nbd/nbd-protocol.ts";
import { RawSocket } from "./raw-socket.ts";

export interface OptionReply {
  opt: number;
  type: number;
  data: Buffer;
}

export class RawNbd {
  size = 0;
  flags = 0;
  private nextCookie = 1n;
  constructor(readonly sock: RawSocket) {}

  /** Opens a connection and completes the greeting (server flags, client flags). */
  static async connect(path: string): Promise<RawNbd> {
    const c = new RawNbd(await RawSocket.unix(path));
    const g = await c.sock.read(18);
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error("bad greeting");
    const f = Buffer.alloc(4);
    f.writeUInt32BE(3, 0); // fixed newstyle + no zeroes
    c.sock.write(f);
    return c;
  }

  sendOption(opt: number, data: Uint8Array = new Uint8Array(0)): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    this.sock.write(Buffer.concat([h, data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.sock.read(20);
    if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error("bad option reply magic");
    const len = h.readUInt32BE(16);
    return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.sock.read(len) };
  }

  /** OPT_GO with the default export; leaves the connection in transmission. */
  async go(name = ""): Promise<void> {
    const n = Buffer.from(name);
    const d = Buffer.alloc(4 + n.length + 2);
    d.writeUInt32BE(n.length, 0);
    n.copy(d, 4);
    this.sendOption(Opt.GO, d);
    for (;;) {
      const r = await this.readOptionReply();
      if (r.type === 1) return; // ACK
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) {
        this.size = Number(r.data.readBigUInt64BE(2));
        this.flags = r.data.readUInt16BE(10);
      } else if (r.type >= 0x80000000) throw new Error(`GO refused: ${r.type.toString(16)} ${r.data}`);
    }
  }

  /** Sends one request (the header and, for WRITE, the payload); returns its cookie. */
  request(type: number, offset: number, length: number, opts: { flags?: number; payload?: Uint8Array } = {}): bigint {
    const cookie = this.nextCookie++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(opts.flags ?? 0, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.sock.write(opts.payload ? Buffer.concat([h, opts.payload]) : h);
    return cookie;
  }

  /** Reads one simple reply; `readLength` bytes of data follow a successful READ. `timeoutMs`: how long to wait for it. */
  async reply(readLength = 0, timeoutMs?: number): Promise<{ error: number; cookie: bigint; data?: Buffer }> {
    const h = await this.sock.read(16, timeoutMs);
    if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error("bad reply magic");
    const error = h.readUInt32BE(4);
    const cookie = h.readBigUInt64BE(8);
    const data = error === 0 && readLength > 0 ? await this.sock.read(readLength) : undefined;
    return { error, cookie, data };
  }

  /** Reads one structured reply chunk (after NBD_OPT_STRUCTURED_REPLY). */
  async chunk(): Promise<{ flags: number; type: number; cookie: bigint; payload: Buffer }> {
    const h = await this.sock.read(20);
    if (h.readUInt32BE(0) !== STRUCTURED_REPLY_MAGIC) throw new Error(`bad structured reply magic ${h.readUInt32BE(0).toString(16)}`);
    return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), payload: await this.sock.read(h.readUInt32BE(16)) };
  }

  async read(offset: number, length: number): Promise<{ error: number; data?: Buffer }> {
    this.request(Cmd.READ, offset, length);
    return this.reply(length);
  }

  async write(offset: number, data: Uint8Array, flags = 0, timeoutMs?: number): Promise<number> {
    this.request(Cmd.WRITE, offset, data.length, { payload: data, flags });
    return (await this.reply(0, timeoutMs)).error;
  }

  disconnect(): void {
    this.request(Cmd.DISC, 0, 0);
    this.sock.end();
  }
}
