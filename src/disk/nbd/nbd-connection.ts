// One NBD client connection: fixed-newstyle handshake, then pipelined requests.
//
// Structure after nbdkit's server/protocol.c: `validateRequest` is pure (range, flags,
// read-only, each with its own message); `handleRequest` does the I/O. A rejected WRITE's
// payload is drained so the stream stays in step, and the client gets an NBD error reply,
// never a dropped connection. A malformed handshake ends this connection only.

import type { Socket } from "bun";
import { type BlockBackend, type MaybePromise, nbdErrorFor } from "../block/backend.ts";
import {
  allowedCmdFlags,
  BLOCK_MIN,
  BLOCK_PREFERRED,
  ClientFlag,
  Cmd,
  CmdFlag,
  cmdName,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  NBDMAGIC,
  NbdErr,
  Opt,
  OPTION_HEADER_LEN,
  OPTION_MAX_LEN,
  OPTION_REPLY_MAGIC,
  optName,
  Rep,
  REQUEST_HEADER_LEN,
  REQUEST_MAGIC,
  SIMPLE_REPLY_LEN,
  SIMPLE_REPLY_MAGIC,
  TransmissionFlag,
} from "./nbd-protocol.ts";
import { allocationContextReply, blockStatusChunk, errorChunk, parseMetaContextRequest, readChunk, selectsAllocation } from "./nbd-structured.ts";
import { ByteQueue } from "../../util/byte-queue.ts";
import { CORK_BYTES, SocketWriter } from "../../util/socket-writer.ts";
import { BufferPool } from "../../util/buffer-pool.ts";
import { copyPayload, type Payload } from "../block/payload.ts";
import type { Logger } from "../../log.ts";

export interface NbdExport {
  name: string;
  description: string;
  backend: BlockBackend;
  /** This export's requests (a VM's disks are counted apart). */
  stats: NbdStats;
}

/** What a connection needs from its server. */
export interface ConnectionHost {
  /** Looks up an export by the name the client asked for ("" means the default). */
  findExport(name: string): NbdExport | undefined;
  listExports(): readonly NbdExport[];
  /** Resolves when a request of this kind may be served; the destination holds them until consistent. */
  gate(read: boolean): Promise<void> | undefined;
  /** The largest READ or WRITE payload advertised (NBD_INFO_BLOCK_SIZE) and accepted. */
  readonly maxRequest: number;
  log: Logger;
}

export interface NbdStats {
  reads: number;
  writes: number;
  zeroes: number;
  trims: number;
  flushes: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
}

export function newStats(): NbdStats {
  return { reads: 0, writes: 0, zeroes: 0, trims: 0, flushes: 0, bytesRead: 0, bytesWritten: 0, errors: 0 };
}

interface Request {
  flags: number;
  type: number;
  cookie: Uint8Array; // 8 opaque bytes echoed back
  offset: number;
  length: number;
}

type Step =
  | { kind: "clientFlags" }
  | { kind: "optionHeader" }
  | { kind: "optionData"; opt: number; length: number }
  | { kind: "requestHeader" }
  | { kind: "writePayload"; req: Request }
  | { kind: "drain"; left: number; then: () => void }
  | { kind: "done" };

/** Backpressure: stop reading a client that does not read its replies. */
const OUT_HIGH_WATER = 64 * 1024 * 1024;
const OUT_LOW_WATER = 16 * 1024 * 1024;
/** Requests being served at once per connection before we stop reading more. */
const MAX_IN_FLIGHT = 512;

class ProtocolViolation extends Error {}

export class NbdConnection {
  private inq = new ByteQueue();
  private step: Step = { kind: "clientFlags" };
  private noZeroes = false;
  /** NBD_OPT_STRUCTURED_REPLY was negotiated: READ answers in chunks, BLOCK_STATUS may be offered. */
  private structured = false;
  /** The export base:allocation was selected for (SET_META_CONTEXT needs structured replies); BLOCK_STATUS is served on it only. */
  private allocationFor?: NbdExport;
  private export?: NbdExport;
  private transmissionFlags = 0;
  private readonly out: SocketWriter;
  /**
   * Large READ replies' buffers, reused once the socket took a reply whole (buffer-pool.ts).
   * From CORK_BYTES up, so that a cork never holds one back: it goes to the socket at once.
   */
  private readonly replies = new BufferPool({ minBytes: CORK_BYTES, allocBytes: 1024 * 1024 + 64, keep: 1 });
  private readonly replyBuffer = (n: number) => this.replies.take(n);
  private inFlight = 0;
  private paused = false;
  private disconnecting = false;
  closed = false;

  constructor(
    private readonly socket: Socket<unknown>,
    private readonly host: ConnectionHost,
    readonly peer: string,
  ) {
    this.out = new SocketWriter(socket);
  }

  open(): void {
    const b = Buffer.alloc(18);
    b.writeBigUInt64BE(NBDMAGIC, 0);
    b.writeBigUInt64BE(IHAVEOPT, 8);
    b.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
    this.send(b);
  }

  onData(chunk: Uint8Array): void {
    this.inq.push(chunk);
    this.process();
  }

  onDrain(): void {
    this.out.drain();
    if (this.out.closed) return this.onClose();
    this.maybeResume();
  }

  onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.step = { kind: "done" };
    this.out.discard();
    if (this.inFlight > 0)
      this.host.log.info(`client ${this.peer} went away with ${this.inFlight} request(s) in flight`);
  }

  private process(): void {
    // The replies to what this chunk held go out as one write (socket-writer.ts).
    this.out.cork();
    let failed = false;
    try {
      while (!this.closed && !this.paused) {
        if (!this.stepOnce()) break;
      }
    } catch (err) {
      failed = true;
      if (err instanceof ProtocolViolation) {
        this.host.log.warn(`client ${this.peer}: ${err.message}; closing this connection`);
      } else {
        this.host.log.error(`client ${this.peer}: unexpected error, closing this connection:`, err);
      }
    } finally {
      this.out.uncork(); // the answers to the requests before a violation still go out, before we hang up
    }
    if (failed) this.hangUp();
  }

  /** Advances the parser by one unit; false when more bytes are needed. */
  private stepOnce(): boolean {
    const q = this.inq;
    const s = this.step;
    switch (s.kind) {
      case "clientFlags": {
        if (q.length < 4) return false;
        const flags = Buffer.from(q.take(4)).readUInt32BE(0);
        if (flags & ~(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES))
          throw new ProtocolViolation(`unknown client flags 0x${flags.toString(16)}`);
        if (!(flags & ClientFlag.FIXED_NEWSTYLE)) throw new ProtocolViolation("client does not speak fixed newstyle");
        this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
        this.step = { kind: "optionHeader" };
        return true;
      }
      case "optionHeader": {
        if (q.length < OPTION_HEADER_LEN) return false;
        const h = Buffer.from(q.take(OPTION_HEADER_LEN));
        if (h.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolViolation("option without the IHAVEOPT magic");
        const opt = h.readUInt32BE(8);
        const length = h.readUInt32BE(12);
        if (length > OPTION_MAX_LEN) throw new ProtocolViolation(`option ${optName(opt)} of ${length} bytes is too large`);
        this.step = { kind: "optionData", opt, length };
        return true;
      }
      case "optionData": {
        if (q.length < s.length) return false;
        const data = Buffer.from(q.take(s.length));
        this.step = { kind: "optionHeader" };
        this.handleOption(s.opt, data);
        return true;
      }
      case "requestHeader": {
        if (this.inFlight >= MAX_IN_FLIGHT) {
          this.pauseReading();
          return false;
        }
        if (q.length < REQUEST_HEADER_LEN) return false;
        const req = parseRequest(q.take(REQUEST_HEADER_LEN));
        this.onRequest(req);
        return true;
      }
      case "writePayload": {
        if (q.length < s.req.length) return false;
        const data = q.takePayload(s.req.length); // the pieces it arrived in: no join (payload.ts)
        this.step = { kind: "requestHeader" };
        this.serve(s.req, data);
        return true;
      }
      case "drain": {
        const n = q.skip(s.left);
        if (n === 0) return false;
        s.left -= n;
        if (s.left === 0) {
          this.step = { kind: "requestHeader" };
          s.then();
        }
        return true;
      }
      case "done":
        if (q.length > 0) q.skip(q.length);
        return false;
    }
  }

  // ---- handshake -------------------------------------------------------------------

  private handleOption(opt: number, data: Buffer): void {
    switch (opt) {
      case Opt.EXPORT_NAME: {
        const ex = this.host.findExport(data.toString("utf8"));
        // EXPORT_NAME has no error reply: the only way to refuse is to hang up.
        if (!ex) throw new ProtocolViolation(`unknown export ${JSON.stringify(data.toString("utf8"))}`);
        this.enterTransmission(ex);
        const b = Buffer.alloc(this.noZeroes ? 10 : 134);
        b.writeBigUInt64BE(BigInt(ex.backend.size), 0);
        b.writeUInt16BE(this.transmissionFlags, 8);
        this.send(b);
        return;
      }
      case Opt.ABORT:
        this.sendOptionReply(opt, Rep.ACK);
        this.hangUp();
        return;
      case Opt.LIST: {
        if (data.length !== 0) return this.sendOptionError(opt, Rep.ERR_INVALID, "LIST takes no data");
        for (const ex of this.host.listExports()) {
          const name = Buffer.from(ex.name, "utf8");
          const b = Buffer.alloc(4 + name.length);
          b.writeUInt32BE(name.length, 0);
          name.copy(b, 4);
          this.sendOptionReply(opt, Rep.SERVER, b);
        }
        this.sendOptionReply(opt, Rep.ACK);
        return;
      }
      case Opt.INFO:
      case Opt.GO:
        return this.handleInfoOrGo(opt, data);
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) return this.sendOptionError(opt, Rep.ERR_INVALID, "STRUCTURED_REPLY takes no data");
        this.structured = true;
        this.sendOptionReply(opt, Rep.ACK);
        return;
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        return this.handleMetaContext(opt, data);
      default:
        this.host.log.debug(`client ${this.peer}: option ${optName(opt)} not supported`);
        this.sendOptionError(opt, Rep.ERR_UNSUP, `option ${optName(opt)} is not supported`);
    }
  }

  private handleInfoOrGo(opt: number, data: Buffer): void {
    if (data.length < 6) return this.sendOptionError(opt, Rep.ERR_INVALID, "truncated request");
    const nameLen = data.readUInt32BE(0);
    if (4 + nameLen + 2 > data.length) return this.sendOptionError(opt, Rep.ERR_INVALID, "name length past the data");
    const name = data.subarray(4, 4 + nameLen).toString("utf8");
    const nreq = data.readUInt16BE(4 + nameLen);
    if (data.length !== 4 + nameLen + 2 + 2 * nreq)
      return this.sendOptionError(opt, Rep.ERR_INVALID, "information request count does not match the length");
    const requested = new Set<number>();
    for (let i = 0; i < nreq; i++) requested.add(data.readUInt16BE(6 + nameLen + 2 * i));
    const ex = this.host.findExport(name);
    if (!ex) return this.sendOptionError(opt, Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(name)}`);

    const flags = transmissionFlagsFor(ex);
    const info = Buffer.alloc(12);
    info.writeUInt16BE(Info.EXPORT, 0);
    info.writeBigUInt64BE(BigInt(ex.backend.size), 2);
    info.writeUInt16BE(flags, 10);
    this.sendOptionReply(opt, Rep.INFO, info);
    if (requested.has(Info.NAME)) {
      const n = Buffer.from(ex.name, "utf8");
      this.sendOptionReply(opt, Rep.INFO, Buffer.concat([u16(Info.NAME), n]));
    }
    if (requested.has(Info.DESCRIPTION) && ex.description) {
      this.sendOptionReply(opt, Rep.INFO, Buffer.concat([u16(Info.DESCRIPTION), Buffer.from(ex.description, "utf8")]));
    }
    // Always safe to send: a 1-byte minimum imposes nothing on the client.
    const bs = Buffer.alloc(14);
    bs.writeUInt16BE(Info.BLOCK_SIZE, 0);
    bs.writeUInt32BE(BLOCK_MIN, 2);
    bs.writeUInt32BE(BLOCK_PREFERRED, 6);
    bs.writeUInt32BE(this.host.maxRequest, 10);
    this.sendOptionReply(opt, Rep.INFO, bs);
    this.sendOptionReply(opt, Rep.ACK);
    if (opt === Opt.GO) this.enterTransmission(ex);
  }

  private handleMetaContext(opt: number, data: Buffer): void {
    if (!this.structured) return this.sendOptionError(opt, Rep.ERR_INVALID, "negotiate structured replies first");
    const req = parseMetaContextRequest(data);
    if (typeof req === "string") return this.sendOptionError(opt, Rep.ERR_INVALID, req);
    const ex = this.host.findExport(req.exportName);
    if (!ex) return this.sendOptionError(opt, Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(req.exportName)}`);
    const listing = opt === Opt.LIST_META_CONTEXT;
    const selected = selectsAllocation(req.queries, listing);
    if (selected) this.sendOptionReply(opt, Rep.META_CONTEXT, allocationContextReply(listing));
    // SET replaces what an earlier SET chose, even with nothing.
    if (!listing) this.allocationFor = selected ? ex : undefined;
    this.sendOptionReply(opt, Rep.ACK);
  }

  private enterTransmission(ex: NbdExport): void {
    this.export = ex;
    this.transmissionFlags = transmissionFlagsFor(ex);
    this.step = { kind: "requestHeader" };
    this.host.log.debug(`client ${this.peer}: serving export ${JSON.stringify(ex.name)}`);
  }

  private sendOptionReply(opt: number, type: number, data: Uint8Array = new Uint8Array(0)): void {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(type, 12);
    h.writeUInt32BE(data.length, 16);
    this.send(data.length ? Buffer.concat([h, data]) : h);
  }

  private sendOptionError(opt: number, type: number, message: string): void {
    this.sendOptionReply(opt, type, Buffer.from(message, "utf8"));
  }

  // ---- transmission ----------------------------------------------------------------

  private onRequest(req: Request): void {
    const problem = this.validateRequest(req);
    if (problem) {
      this.export!.stats.errors++;
      this.host.log.info(`client ${this.peer}: ${cmdName(req.type)} offset=${req.offset} length=${req.length}: ${problem.message}`);
      // A refused write's payload is read first, then answered: libnbd, still sending it, took
      // an answer before its end for a reply to no request of its own and gave the handle up.
      const answer = () => this.replyError(req, problem.error, problem.message);
      if (req.type === Cmd.WRITE && req.length > 0) this.step = { kind: "drain", left: req.length, then: answer };
      else answer();
      return;
    }
    if (req.type === Cmd.WRITE) {
      this.step = { kind: "writePayload", req };
      return;
    }
    if (req.type === Cmd.DISC) {
      this.disconnecting = true;
      this.step = { kind: "done" };
      this.maybeFinishDisconnect();
      return;
    }
    this.serve(req);
  }

  /** Read-only checks; the first problem found is what the client is told. */
  private validateRequest(req: Request): { error: number; message: string } | undefined {
    const ex = this.export!;
    const size = ex.backend.size;
    const allowed = allowedCmdFlags[req.type];
    if (allowed === undefined) return { error: NbdErr.EINVAL, message: `unknown command ${req.type}` };
    if (req.flags & ~allowed) return { error: NbdErr.EINVAL, message: `flags 0x${req.flags.toString(16)} not valid here` };
    const isWrite = req.type === Cmd.WRITE || req.type === Cmd.TRIM || req.type === Cmd.WRITE_ZEROES;
    if (req.type === Cmd.FLUSH || req.type === Cmd.DISC) return undefined;
    if (req.type === Cmd.BLOCK_STATUS && this.allocationFor !== ex) return { error: NbdErr.EINVAL, message: "BLOCK_STATUS without base:allocation selected" };
    if (isWrite && ex.backend.readOnly) return { error: NbdErr.EPERM, message: "the export is read-only" };
    if ((req.type === Cmd.READ || req.type === Cmd.WRITE || req.type === Cmd.BLOCK_STATUS) && req.length === 0)
      return { error: NbdErr.EINVAL, message: "zero-length request" };
    if ((req.type === Cmd.READ || req.type === Cmd.WRITE) && req.length > this.host.maxRequest)
      return { error: NbdErr.EINVAL, message: `request larger than the ${this.host.maxRequest}-byte maximum` };
    if (req.offset + req.length > size)
      return {
        error: isWrite ? NbdErr.ENOSPC : NbdErr.EINVAL,
        message: `range ends at ${req.offset + req.length}, past the end of the ${size}-byte export`,
      };
    return undefined;
  }

  private serve(req: Request, payload?: Payload): void {
    const gate = this.host.gate(req.type === Cmd.READ || req.type === Cmd.BLOCK_STATUS);
    if (gate) {
      // Held until the image is consistent; the payload view must outlive this callback.
      const kept = payload ? copyPayload(payload) : undefined;
      this.track(gate.then(() => this.execute(req, kept)), req);
      return;
    }
    let result: MaybePromise<void>;
    try {
      result = this.execute(req, payload);
    } catch (err) {
      this.fail(req, err);
      return;
    }
    if (result instanceof Promise) this.track(result, req);
  }

  /** Performs one validated request; replies itself when synchronous, else returns a promise that does. */
  private execute(req: Request, payload?: Payload): MaybePromise<void> {
    const be = this.export!.backend;
    const stats = this.export!.stats;
    const fua = (req.flags & CmdFlag.FUA) !== 0;
    switch (req.type) {
      case Cmd.READ: {
        const fill = (into: Uint8Array) => be.read(req.offset, into);
        const out = this.structured ? readChunk(req.cookie, req.offset, req.length, fill, this.replyBuffer) : simpleReadReply(req.cookie, req.length, fill, this.replyBuffer);
        stats.reads++;
        stats.bytesRead += req.length;
        this.send(out);
        if (this.out.queued === 0) this.replies.release(out); // the socket took the whole reply
        return;
      }
      case Cmd.BLOCK_STATUS: {
        this.send(blockStatusChunk(req.cookie, be.extents(req.offset, req.length, req.flags & CmdFlag.REQ_ONE ? 1 : undefined)));
        return;
      }
      case Cmd.WRITE:
        stats.writes++;
        stats.bytesWritten += req.length;
        return this.completion(req, be.write(req.offset, payload!, fua));
      case Cmd.WRITE_ZEROES:
        stats.zeroes++;
        return this.completion(req, be.zero(req.offset, req.length, fua, (req.flags & CmdFlag.NO_HOLE) === 0));
      case Cmd.TRIM:
        stats.trims++;
        return this.completion(req, be.trim(req.offset, req.length, fua));
      case Cmd.FLUSH:
        stats.flushes++;
        return this.completion(req, be.flush());
    }
  }

  private completion(req: Request, r: MaybePromise<void>): MaybePromise<void> {
    if (r instanceof Promise) return r.then(() => this.reply(req.cookie, 0));
    this.reply(req.cookie, 0);
  }

  private track(p: Promise<void>, req: Request): void {
    this.inFlight++;
    p.catch((err) => this.fail(req, err)).finally(() => {
      this.inFlight--;
      this.maybeResume();
      this.maybeFinishDisconnect();
    });
  }

  private fail(req: Request, err: unknown): void {
    const code = nbdErrorFor(err);
    this.export!.stats.errors++;
    const msg = err instanceof Error ? err.message : String(err);
    // Refusals by design (fence, read-only) are expected during a migration; I/O errors are not.
    if (code === NbdErr.EPERM) this.host.log.debug(`client ${this.peer}: ${cmdName(req.type)} refused: ${msg}`);
    else this.host.log.warn(`client ${this.peer}: ${cmdName(req.type)} offset=${req.offset} length=${req.length} failed: ${msg}`);
    this.replyError(req, code, msg);
  }

  /** With structured replies, READ and BLOCK_STATUS fail with an ERROR chunk; the rest, and every simple-reply client, with a simple reply. */
  private replyError(req: Request, error: number, message: string): void {
    if (this.structured && (req.type === Cmd.READ || req.type === Cmd.BLOCK_STATUS)) this.send(errorChunk(req.cookie, error, message));
    else this.reply(req.cookie, error);
  }

  private reply(cookie: Uint8Array, error: number): void {
    const b = Buffer.allocUnsafe(SIMPLE_REPLY_LEN);
    writeReplyHeader(b, cookie, error);
    this.send(b);
  }

  private maybeFinishDisconnect(): void {
    if (this.disconnecting && this.inFlight === 0 && !this.closed) {
      this.host.log.debug(`client ${this.peer}: disconnected cleanly`);
      this.endStream();
    }
  }

  // ---- output and flow control --------------------------------------------------------

  private send(b: Uint8Array): void {
    if (this.closed) return;
    this.out.write(b);
    if (this.out.queued > OUT_HIGH_WATER) this.pauseReading();
  }

  private pauseReading(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  private maybeResume(): void {
    if (!this.paused || this.closed) return;
    if (this.out.queued > OUT_LOW_WATER || this.inFlight >= MAX_IN_FLIGHT) return;
    this.paused = false;
    this.socket.resume();
    this.process();
  }

  private hangUp(): void {
    this.step = { kind: "done" };
    this.endStream();
  }

  /** Ends the stream after the answers gathered in this batch (an ABORT's acknowledgement). */
  private endStream(): void {
    this.out.flushGathered();
    this.socket.end();
  }
}

function parseRequest(b: Uint8Array): Request {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (v.getUint32(0) !== REQUEST_MAGIC) throw new ProtocolViolation("request without the request magic");
  const hi = v.getUint32(16);
  const lo = v.getUint32(20);
  return {
    flags: v.getUint16(4),
    type: v.getUint16(6),
    cookie: b.slice(8, 16),
    // Offsets past 2^53 cannot be exact in a number; they are past any export anyway.
    offset: hi >= 0x200000 ? Number.MAX_SAFE_INTEGER : hi * 0x100000000 + lo,
    length: v.getUint32(24),
  };
}

/** A READ's simple reply: the header, then the data read straight in after it (a buffer from `alloc`). */
function simpleReadReply(cookie: Uint8Array, length: number, fill: (into: Uint8Array) => void, alloc: (n: number) => Buffer): Buffer {
  const out = alloc(SIMPLE_REPLY_LEN + length);
  fill(out.subarray(SIMPLE_REPLY_LEN));
  writeReplyHeader(out, cookie, 0);
  return out;
}

function writeReplyHeader(out: Buffer, cookie: Uint8Array, error: number): void {
  out.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  out.writeUInt32BE(error, 4);
  out.set(cookie, 8);
}

function transmissionFlagsFor(ex: NbdExport): number {
  let f =
    TransmissionFlag.HAS_FLAGS |
    TransmissionFlag.SEND_FLUSH |
    TransmissionFlag.SEND_FUA |
    TransmissionFlag.SEND_TRIM |
    TransmissionFlag.SEND_WRITE_ZEROES |
    // Safe: all connections share one file descriptor, so a flush covers them all.
    TransmissionFlag.CAN_MULTI_CONN;
  if (ex.backend.readOnly) f |= TransmissionFlag.READ_ONLY;
  return f;
}

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v, 0);
  return b;
}
