// A message channel over a byte stream (TCP socket, or the pipes of `ssh … dest --stdio`):
// framed sends with backpressure, ordered receives.

import type { Socket, TCPSocketListener, TLSOptions } from "bun";
import { ExitCode } from "../errors.ts";
import { ProtocolError } from "./errors.ts";
import { Opener, Sealer } from "./seal.ts";
import { TlsError } from "./tls.ts";
import { encodeFrame, FRAME_BUFFER_BYTES, FrameDecoder, type Message, MIN_POOLED_FRAME, msg, MsgType, typeName } from "./protocol.ts";
import { DrainMeter } from "./drain-meter.ts";
import type { TokenBucket } from "./rate.ts";
import { SocketWriter } from "../util/socket-writer.ts";
import { BufferPool } from "../util/buffer-pool.ts";
import { codeOf, connectError, listenError } from "../util/os-errors.ts";
import { type LaneInbox, STALL_MS, stalledLane, StripeMerger, StripeScheduler } from "./lanes.ts";

/**
 * Unsent bytes past which send() waits: about QUEUE_MS of the link once its rate is known,
 * within these bounds; the floor before. A queue is data already compressed at the level of
 * its day and a wait before anything sent later (a delta, the barrier): 8 MiB on a 5 Mbit/s
 * WAN was 13 s. A fast link still gets 8 MiB, as before.
 */
const MIN_HIGH_WATER = 1024 * 1024;
const MAX_HIGH_WATER = 8 * 1024 * 1024;
const QUEUE_MS = 500;
/** The link's rate is read from at least this long a backlog (drain-meter.ts); the bulk throttle's first verdict waits for it too. */
const LINK_MIN_MS = 200;
/**
 * Received and not yet taken: past the high mark we stop reading the stream (TCP then
 * pushes back on the sender), under the low mark we read again. Without it a receiver
 * slower than the link would buffer without bound.
 */
const INBOX_HIGH = 16 * 1024 * 1024;
const INBOX_LOW = 4 * 1024 * 1024;
/**
 * A joined lane's inbox (lanes.ts): frames wait there only while the receiver reads another
 * lane, and the kernel's window holds the rest; eight lanes at 16 MiB each would be most of
 * the process's 200 MiB.
 */
const LANE_INBOX_HIGH = 4 * 1024 * 1024;
const LANE_INBOX_LOW = 1024 * 1024;
/** A striped channel's waits wake this often to look for a stalled lane. */
const STALL_CHECK_MS = 1000;

/** Pauses and resumes reading from the underlying stream. */
export interface ReadFlow {
  pause(): void;
  resume(): void;
}

function messageBytes(m: Message): number {
  return "data" in m ? m.data.length + 32 : "hashes" in m ? m.hashes.length + 32 : 64;
}

export class ChannelClosed extends ProtocolError {
  constructor(message = "the peer closed the connection", cause?: unknown) {
    super(message, { exitCode: ExitCode.peerFailure, cause });
  }
}

/**
 * The peer sent ERROR: it gave up on this migration for good. A destination that sends
 * ERROR never releases the image it was receiving (receive.ts), which is what lets the
 * source unfence safely even after its point of no return.
 */
export class PeerAborted extends ProtocolError {
  constructor(readonly reason: string) {
    super(`the peer aborted: ${reason}`, { exitCode: ExitCode.peerFailure });
  }
}

export function peerAborted(err: unknown): PeerAborted | undefined {
  for (let e = err; e; e = (e as Error).cause) if (e instanceof PeerAborted) return e;
  return undefined;
}

/** The writing half of a byte stream, as a Bun socket has it: takes what it can now. */
export interface ByteWriter {
  /** Bytes taken now (the rest is retried on drain), or -1 once closed. */
  write(b: Uint8Array): number;
  end(): void;
}

export class Channel {
  private decoder = new FrameDecoder();
  private inbox: Message[] = [];
  private inboxBytes = 0;
  private readPaused = false;
  /** Set by the transport: how to stop and restart reading (backpressure on the inbox). */
  flow?: ReadFlow;
  private failure?: Error;
  private wake?: () => void;
  private readonly out: SocketWriter;
  private drained?: () => void;
  closed = false;
  /** Set by the source with --bandwidth. */
  rate?: TokenBucket;
  bytesSent = 0;
  bytesReceived = 0;
  /** Time send() spent waiting for the link (or --bandwidth) so far: the sender was not the bottleneck then. */
  waitedMs = 0;
  private readonly meter = new DrainMeter();
  /**
   * Data frames' buffers, reused (buffer-pool.ts). Only where the writer copies what it
   * takes (a Bun TCP socket); a pipe's writer may keep the buffer.
   */
  private frames?: BufferPool;

  /** Sealed frames (seal.ts), from the handshake's end on; undefined in the clear (--insecure, SSH). */
  private sealer?: Sealer;
  private opener?: Opener;

  /** We told the peer we give up (so an abort path does not say it twice). */
  errorSent = false;
  /** Over TCP: this end's and the peer's addresses (the network redirect's tunnel endpoints). */
  localAddress?: string;
  remoteAddress?: string;

  /** The connections this channel is made of (lanes.ts): this one first, then those joined to it. */
  private lanes: (Channel | undefined)[] = [this];
  /** Set on a joined lane: the channel it is part of. */
  private primary?: Channel;
  /** Set once this end stripes what it sends (the source); the destination answers on lane 0. */
  private scheduler?: StripeScheduler;
  private merger?: StripeMerger<Message>;
  /** The lanes as the merger reads them (a lane's own inbox, not the channel's merged view). */
  private inboxes: (LaneInbox<Message> | undefined)[] = [];
  /** When this lane's backlog last moved (a stalled lane's backlog never does). */
  private lastTakenAt = 0;

  /** `copiesWrites`: the writer copies what it takes, so a frame it took whole can be reused (see `frames`). */
  constructor(
    private socket: ByteWriter,
    copiesWrites = false,
  ) {
    this.out = new SocketWriter(socket);
    if (copiesWrites) this.frames = new BufferPool({ minBytes: MIN_POOLED_FRAME, allocBytes: FRAME_BUFFER_BYTES, keep: 1 });
  }

  /** Called by the socket's handlers. */
  onData(chunk: Uint8Array): void {
    this.bytesReceived += chunk.length;
    if (this.failure) return; // the stream lost step: what follows cannot be decoded
    try {
      if (this.opener) for (const frame of this.opener.push(chunk)) this.take1(this.decoder.decodeWhole(frame));
      else for (const m of this.decoder.push(chunk)) this.take1(m);
    } catch (err) {
      // Not closed here: the owner reads the failure, tells the peer why, then closes.
      this.fail(err as Error);
    }
    if (this.inboxBytes > (this.primary ? LANE_INBOX_HIGH : INBOX_HIGH) && !this.readPaused && this.flow) {
      this.readPaused = true;
      this.flow.pause();
    }
    if (this.primary) this.primary.bytesReceived += chunk.length;
    this.wakeReader();
  }

  private wakeReader(): void {
    const owner = this.primary ?? this;
    owner.wake?.();
  }

  private take1(m: Message): void {
    this.inbox.push(m);
    this.inboxBytes += messageBytes(m);
    if (m.type === MsgType.ERROR) this.fail(new PeerAborted(m.message));
  }

  /**
   * From now on every byte that arrives must be a sealed frame (seal.ts). Called at the
   * handshake's end, when the peer cannot yet have sent one: anything already here came
   * in the clear after authentication, and is refused.
   */
  sealInbound(key: Buffer): void {
    if (this.inbox.length || this.decoder.buffered) throw new ProtocolError("the peer sent frames in the clear after authentication");
    this.opener = new Opener(key, (n) => this.decoder.frameBuffer(n));
  }

  /** From now on every frame sent is sealed. */
  sealOutbound(key: Buffer): void {
    this.sealer = new Sealer(key);
  }

  /** The next message; an ERROR from the peer is thrown here, once for every reader, as PeerAborted. */
  private take(): Message | undefined {
    const m = this.inbox.shift();
    if (!m) return undefined;
    this.inboxBytes -= messageBytes(m);
    if (this.readPaused && this.inboxBytes < (this.primary ? LANE_INBOX_LOW : INBOX_LOW)) {
      this.readPaused = false;
      this.flow?.resume();
    }
    if (m.type === MsgType.ERROR) throw new PeerAborted(m.message);
    return m;
  }

  onDrain(): void {
    const all = this.out.drain();
    this.lastTakenAt = performance.now();
    const owner = this.primary ?? this;
    owner.observe();
    // Striped, the sender waits for the whole channel's backlog, so any lane's drain may end it.
    if (all || owner !== this || owner.lanes.length > 1) owner.drained?.();
  }

  /** Bytes waiting here, on every lane, for the kernel to take them. */
  private queued(): number {
    let n = 0;
    for (const l of this.lanes) n += l?.out.queued ?? 0;
    return n;
  }

  /** Whether bytes wait here for the kernel to take them: the link is the bottleneck now. */
  hasBacklog(): boolean {
    return this.queued() > 0;
  }

  /** The caller is done with a message's data (nothing keeps a view of it): its buffer takes a later frame. */
  recycle(data: Uint8Array): void {
    this.decoder.recycle(data);
  }

  /** Bytes handed to the kernel so far (sent less what waits here). */
  handedBytes(): number {
    return this.bytesSent - this.queued();
  }

  private observe(): void {
    this.meter.observe(performance.now(), this.handedBytes(), this.hasBacklog());
  }

  /** Wire bytes per ms the link takes, as measured under backlog (or --bandwidth's cap, if lower); undefined while it never was the bottleneck. */
  linkBytesPerMs(): number | undefined {
    const measured = this.meter.bytesPerMs(LINK_MIN_MS);
    const capped = this.rate ? this.rate.bytesPerSec / 1000 : undefined;
    return measured === undefined ? capped : capped === undefined ? measured : Math.min(measured, capped);
  }

  /** The drain meter's running totals (drain-meter.ts): a caller's two readings give the link's rate between them. */
  drainTotals(): { busyMs: number; busyBytes: number } {
    return (this.primary ?? this).meter.totals();
  }

  private highWater(): number {
    const link = this.linkBytesPerMs();
    return link === undefined ? MIN_HIGH_WATER : Math.min(MAX_HIGH_WATER, Math.max(MIN_HIGH_WATER, link * QUEUE_MS));
  }

  onClose(err?: Error): void {
    this.closed = true;
    this.fail(err ? new ChannelClosed(`connection lost: ${err.message}`, err) : new ChannelClosed());
    this.drained?.();
    this.wake?.(); // a receiver waiting for the next message must learn the stream is gone
    // One lane lost is the channel lost: the frames it carried are gone, and order with them.
    const p = this.primary;
    if (p && !p.closed) p.onClose(new Error(`stream ${p.lanes.indexOf(this)}: ${this.failure?.message ?? "closed"}`));
  }

  /**
   * Until the matching uncork, small frames (under CORK_BYTES) gather and go to the socket
   * together: a burst of 4 KiB deltas was a syscall each, a third of its cost.
   */
  cork(): void {
    for (const l of this.lanes) l?.out.cork();
  }

  uncork(): void {
    for (const l of this.lanes) l?.out.uncork();
  }

  /**
   * Another connection to the same peer becomes lane `lane` of this channel (lanes.ts): its
   * handshake is done, its own keys seal it, nothing is buffered in it. `stripe`: this end
   * spreads what it sends over the lanes (the source); else it only reads them in order.
   */
  join(lane: number, other: Channel, maxLanes: number, stripe: boolean): void {
    if (other.inbox.length || other.decoder.buffered) throw new ProtocolError(`stream ${lane} sent frames before it joined`);
    if (this.lanes[lane]) throw new ProtocolError(`stream ${lane} joined twice`);
    other.primary = this;
    // One pool of frame buffers for the channel, each way (the decoder's is empty: nothing buffered).
    other.decoder = new FrameDecoder(this.decoder.frames);
    if (other.frames && this.frames) other.frames = this.frames;
    this.lanes[lane] = other;
    this.streams++;
    this.inboxes = this.lanes.map((l) => l && { take: () => l.take(), pending: () => l.inbox.length });
    this.bytesSent += other.bytesSent;
    this.bytesReceived += other.bytesReceived;
    this.merger ??= new StripeMerger<Message>((m) => (m.type === MsgType.NEXT ? m.lane : undefined), maxLanes);
    if (stripe) this.scheduler ??= new StripeScheduler();
    if (other.closed) this.onClose(other.failure);
  }

  /** The connections this channel runs over (counted at join: send() asks on every frame). */
  streams = 1;

  /** Queues one message; resolves once the unsent backlog is below the high-water mark. */
  async send(m: Message): Promise<void> {
    if (this.failure && (this.closed || this.failure instanceof PeerAborted)) throw this.failure;
    if (m.type === MsgType.ERROR) this.errorSent = true;
    const lane = this.laneFor(m);
    // The message's data is copied into the frame here, before any wait: callers may reuse their buffers once send() is called.
    const frame = lane.frame(m);
    if (this.rate) {
      const t0 = performance.now();
      await this.rate.take(frame.length);
      this.waitedMs += performance.now() - t0;
    }
    this.bytesSent += frame.length;
    lane.write(frame);
    this.observe();
    if (lane.out.closed) throw this.failure ?? lane.failure ?? new ChannelClosed();
    if (this.overHighWater()) await this.untilBelowHighWater();
    if (this.closed && this.failure) throw this.failure;
  }

  /** This message's lane: this connection, or (striped) the one the scheduler picks, told to the peer by NEXT on the lane the run leaves. */
  private laneFor(m: Message): Channel {
    if (!this.scheduler || this.streams < 2) return this;
    const lanes = this.lanes;
    const estimate = "data" in m ? m.data.length + 64 : 64;
    const { lane, from } = this.scheduler.place(estimate, lanes.length, (i) => (lanes[i] ? lanes[i]!.out.queued : Number.POSITIVE_INFINITY));
    if (from !== undefined) {
      const next = lanes[from]!.frame(msg.next(lane));
      this.bytesSent += next.length;
      lanes[from]!.write(next);
    }
    return lanes[lane]!;
  }

  /** One frame, encoded and (on a sealed lane) sealed with this lane's keys. */
  private frame(m: Message): { f: Buffer; sealed?: Uint8Array[]; length: number } {
    const f = encodeFrame(m, this.frames && ((n) => this.frames!.take(n)));
    // Sealed in place: f goes as ciphertext, between the record's length and its tag.
    const sealed = this.sealer?.seal(f);
    return { f, sealed, length: sealed ? sealed[0]!.length + f.length + sealed[2]!.length : f.length };
  }

  private write({ f, sealed }: { f: Buffer; sealed?: Uint8Array[] }): void {
    const was = this.out.queued;
    if (sealed) for (const p of sealed) this.out.write(p);
    else this.out.write(f);
    if (this.out.queued === 0) this.frames?.release(f); // the socket took the whole frame
    else if (was === 0) this.lastTakenAt = performance.now(); // a backlog starts: the stall clock with it
  }

  /**
   * Whether send() waits: while the backlog is past the high-water mark and, striped, no lane
   * is empty. A lane whose kernel buffer took all it was given takes the next run at once
   * (the scheduler picks the least backlog). Waiting on the channel's whole backlog held idle
   * connections behind the one a bulk frame was queued on while it left slow start: at
   * 1 Gbit/s, 100 ms, 5 streams, one 4 MiB frame crossed in the bulk's first 850 ms. What
   * waits here stays bounded: the mark, and at most one frame per lane past it.
   */
  private overHighWater(): boolean {
    if (this.queued() <= this.highWater()) return false;
    return !(this.streams > 1 && this.lanes.some((l) => l && !l.closed && l.out.queued === 0));
  }

  private async untilBelowHighWater(): Promise<void> {
    const t0 = performance.now();
    const striped = this.lanes.length > 1;
    while (this.overHighWater() && !this.closed) {
      await new Promise<void>((r) => {
        this.drained = r;
        if (striped) setTimeout(r, STALL_CHECK_MS);
      });
      if (striped) this.failStalledSender();
    }
    this.waitedMs += performance.now() - t0;
  }

  /** A lane whose backlog took no byte for STALL_MS closes the channel (lanes.ts). */
  private failStalledSender(): void {
    const lanes = this.lanes.map((l) => ({ queued: l?.out.queued ?? 0, lastTakenAt: l?.lastTakenAt ?? 0 }));
    const stalled = stalledLane(lanes, performance.now());
    if (stalled !== undefined) this.failStalled(stalled, "took no byte");
  }

  private failStalled(lane: number, what: string): void {
    const err = new ChannelClosed(`stream ${lane} of ${this.streams} stalled: it ${what} for ${STALL_MS / 1000} s`);
    this.fail(err);
    this.closed = true;
    this.close();
    this.drained?.();
    this.wake?.();
  }

  /** The next message, in order; throws if the stream failed or the timeout passed. */
  async recv(timeoutMs = 0): Promise<Message> {
    const m = await this.recvWithin(timeoutMs || Number.POSITIVE_INFINITY);
    if (m) return m;
    throw new ProtocolError(`no message from the peer for ${timeoutMs} ms`, { exitCode: ExitCode.peerFailure });
  }

  /** The next message if one arrives within `ms` (Infinity: waits as long as it takes), else undefined; throws if the stream failed. */
  async recvWithin(ms: number): Promise<Message | undefined> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.tryRecv();
      if (m) return m;
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await new Promise<void>((r) => {
        this.wake = r;
        const tick = this.merger ? Math.min(left, STALL_CHECK_MS) : left;
        if (Number.isFinite(tick)) setTimeout(r, tick);
      });
    }
  }

  /** Messages arrived and not yet taken (striped: on the lane being read; the others' may not be next). */
  pending(): number {
    return this.merger ? (this.lanes[this.merger.lane]?.inbox.length ?? 0) : this.inbox.length;
  }

  /** The next message if one has arrived, without waiting; throws if the stream failed. */
  tryRecv(): Message | undefined {
    const m = this.merger ? this.takeMerged() : this.take();
    if (m) return m;
    if (this.failure) throw this.failure;
    return undefined;
  }

  /** The lanes' next frame in the sender's order (lanes.ts); a stalled lane closes the channel. */
  private takeMerged(): Message | undefined {
    let r: ReturnType<StripeMerger<Message>["take"]>;
    try {
      r = this.merger!.take(this.inboxes, performance.now());
    } catch (err) {
      throw err instanceof RangeError ? new ProtocolError(err.message) : err;
    }
    if ("frame" in r) return r.frame;
    if ("stalled" in r) this.failStalled(r.stalled, "brought nothing while later frames waited on the others");
    return undefined;
  }

    async expect<T extends Message["type"]>(type: T, timeoutMs = 30_000): Promise<Extract<Message, { type: T }>> {
    const m = await this.recv(timeoutMs);
    if (m.type === type) return m as Extract<Message, { type: T }>;
    throw new ProtocolError(`expected ${typeName(type)}, got ${typeName(m.type)}`);
  }

  close(): void {
    for (const l of this.lanes) l?.socket.end();
  }

  /**
   * Ends the stream once what is queued has gone out, and waits (bounded) for the peer to
   * hang up too: a process about to exit would otherwise lose its last words (an ERROR).
   */
  async shutdown(timeoutMs = 2000): Promise<void> {
    const end = Date.now() + timeoutMs;
    const tick = (set: (r: () => void) => void) => new Promise<void>((r) => (set(r), setTimeout(r, 50)));
    while (this.queued() > 0 && !this.closed && Date.now() < end) await tick((r) => (this.drained = r));
    this.close();
    while (this.lanes.some((l) => l && !l.closed) && Date.now() < end) await tick((r) => (this.wake = r));
  }

  /** Why the stream failed, if it did (an ERROR from the peer shows as PeerAborted). */
  get failedWith(): Error | undefined {
    return this.failure;
  }

  private fail(err: Error): void {
    this.failure ??= err;
    // A lane that cannot go on (a forged frame, its peer's ERROR) fails the whole channel.
    if (this.primary && !this.primary.failure) {
      this.primary.fail(err);
      this.primary.wake?.();
    }
  }
}

interface Holder {
  ch?: Channel;
  /** The TLS handshake refused this peer (said once). */
  tlsRefused?: boolean;
}

const PIPE_HIGH_WATER = 4 * 1024 * 1024;

/**
 * A channel over a readable stream and a writer (pipes: our stdio in `dest --stdio`, or
 * the stdio of an `ssh` child). Backpressure: the writer refuses bytes while too much
 * is buffered, and the channel queues them until it drains.
 */
export function pipeChannel(readable: ReadableStream<Uint8Array>, sink: { write(b: Uint8Array): unknown; flush?(): unknown; end(): unknown }, onEnd?: () => void): Channel {
  let buffered = 0;
  let closed = false;
  let ch!: Channel;
  const writer: ByteWriter = {
    write(b) {
      if (closed) return -1;
      if (buffered > PIPE_HIGH_WATER) return 0;
      sink.write(b);
      buffered += b.length;
      Promise.resolve(sink.flush?.()).then(
        () => {
          buffered = 0;
          ch.onDrain();
        },
        () => undefined,
      );
      return b.length;
    },
    end() {
      if (closed) return;
      closed = true;
      try {
        sink.end();
      } catch {}
    },
  };
  ch = new Channel(writer);
  let gate: Promise<void> | undefined;
  let open: (() => void) | undefined;
  ch.flow = {
    pause: () => (gate = new Promise<void>((r) => (open = r))),
    resume: () => {
      gate = undefined;
      open?.();
    },
  };
  (async () => {
    try {
      for await (const chunk of readable) {
        ch.onData(chunk);
        if (gate) await gate;
      }
      ch.onClose();
    } catch (err) {
      ch.onClose(err as Error);
    }
    onEnd?.();
  })();
  return ch;
}

/** Adapts Node's process.stdout (write returns false when full) to the FileSink shape. */
export function stdoutSink(): { write(b: Uint8Array): void; flush(): Promise<void>; end(): void } {
  return {
    write: (b) => void process.stdout.write(b),
    flush: () => (process.stdout.writableNeedDrain ? new Promise((r) => process.stdout.once("drain", () => r())) : Promise.resolve()),
    end: () => process.stdout.end(),
  };
}

/**
 * `tls`: the channel goes to `onOpen` only once the TLS handshake verified the peer; a peer
 * refused there goes to `tls.refused` instead, and its connection is closed.
 */
function handlers(onOpen?: (ch: Channel) => void, tls?: { refused: (why: string) => void }) {
  return {
    open(s: Socket<Holder>) {
      s.data = { ch: new Channel(s as Socket<unknown>, true) };
      s.data.ch!.flow = { pause: () => s.pause(), resume: () => s.resume() };
      s.data.ch!.localAddress = s.localAddress;
      s.data.ch!.remoteAddress = s.remoteAddress;
      s.setNoDelay(true);
      if (!tls) onOpen?.(s.data.ch!);
    },
    handshake(s: Socket<Holder>, success: boolean, authorizationError: Error | null) {
      if (!tls) return;
      if (success && !authorizationError) return onOpen?.(s.data.ch!);
      tls.refused(authorizationError?.message ?? "the TLS handshake failed");
      s.data.tlsRefused = true;
      s.end();
    },
    data(s: Socket<Holder>, d: Uint8Array) {
      s.data.ch?.onData(d);
    },
    drain(s: Socket<Holder>) {
      s.data.ch?.onDrain();
    },
    close(s: Socket<Holder>) {
      s.data?.ch?.onClose();
    },
    error(s: Socket<Holder>, err: Error) {
      if (tls && !s.data?.tlsRefused) tls.refused(err.message);
      s.data?.ch?.onClose(err);
    },
  };
}

/** `tls`: the destination's certificate must chain to the CA (tls.ts); a refusal is a TlsError. */
export async function connectTcp(host: string, port: number, tls?: TLSOptions): Promise<Channel> {
  if (!tls) {
    const s = await Bun.connect<Holder>({ hostname: host, port, socket: handlers(), data: {} }).catch((cause) => {
      throw connectError(cause, { host, port });
    });
    return s.data.ch!;
  }
  const { promise, resolve, reject } = Promise.withResolvers<Channel>();
  const refused = (why: string) => reject(new TlsError(`TLS with ${host}:${port} failed: ${why}`, { hint: "the destination's certificate must chain to --tls-ca and name the host in --to; check both ends' --tls-* files" }));
  const socket = handlers(resolve, { refused });
  const close = socket.close;
  socket.close = (s) => {
    refused("the destination closed the connection during the TLS handshake (did it refuse our certificate?)");
    close(s);
  };
  // Nothing listening (or no such host) is that, as without TLS; anything else is TLS's.
  await Bun.connect<Holder>({ hostname: host, port, socket, data: {}, tls }).catch((err: Error) => (codeOf(err) ? reject(connectError(err, { host, port })) : refused(err.message)));
  return promise;
}

/**
 * `tls`: every source must present a certificate that chains to the CA; a refused one goes to `onRefused`.
 * A port in use, an address not of this host, ...: a ListenError that says which and why
 * (exit 3); `busyHint` is its hint when the port is in use.
 */
export function listenTcp(
  host: string,
  port: number,
  onChannel: (ch: Channel) => void,
  tls?: { options: TLSOptions; onRefused: (why: string) => void },
  opts: { busyHint?: string } = {},
): TCPSocketListener<Holder> {
  try {
    return Bun.listen<Holder>({ hostname: host, port, socket: handlers(onChannel, tls && { refused: tls.onRefused }), data: {}, ...(tls ? { tls: tls.options } : {}) });
  } catch (cause) {
    throw listenError(cause, { host, port }, "cannot listen on", opts.busyHint);
  }
}
