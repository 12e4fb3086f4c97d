// A message channel over a byte stream (TCP socket, or the pipes of `ssh … dest --stdio`):
// framed sends with backpressure, ordered receives.

import type { Socket, TCPSocketListener, TLSOptions } from "bun";
import { ExitCode } from "../errors.ts";
import { ProtocolError } from "./errors.ts";
import { Opener, Sealer } from "./seal.ts";
import { TlsError } from "./tls.ts";
import { encodeFrame, FRAME_BUFFER_BYTES, FrameDecoder, type Message, MIN_POOLED_FRAME, MsgType, typeName } from "./protocol.ts";
import { DrainMeter } from "./drain-meter.ts";
import type { TokenBucket } from "./rate.ts";
import { SocketWriter } from "../util/socket-writer.ts";
import { BufferPool } from "../util/buffer-pool.ts";
import { codeOf, connectError, listenError } from "../util/os-errors.ts";

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
  private readonly frames?: BufferPool;

  /** Sealed frames (seal.ts), from the handshake's end on; undefined in the clear (--insecure, SSH). */
  private sealer?: Sealer;
  private opener?: Opener;

  /** We told the peer we give up (so an abort path does not say it twice). */
  errorSent = false;
  /** Over TCP: this end's and the peer's addresses (the network redirect's tunnel endpoints). */
  localAddress?: string;
  remoteAddress?: string;

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
    if (this.inboxBytes > INBOX_HIGH && !this.readPaused && this.flow) {
      this.readPaused = true;
      this.flow.pause();
    }
    this.wake?.();
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
    if (this.readPaused && this.inboxBytes < INBOX_LOW) {
      this.readPaused = false;
      this.flow?.resume();
    }
    if (m.type === MsgType.ERROR) throw new PeerAborted(m.message);
    return m;
  }

  onDrain(): void {
    const all = this.out.drain();
    this.observe();
    if (all) this.drained?.();
  }

  /** Whether bytes wait here for the kernel to take them: the link is the bottleneck now. */
  hasBacklog(): boolean {
    return this.out.queued > 0;
  }

  /** The caller is done with a message's data (nothing keeps a view of it): its buffer takes a later frame. */
  recycle(data: Uint8Array): void {
    this.decoder.recycle(data);
  }

  /** Bytes handed to the kernel so far (sent less what waits here). */
  handedBytes(): number {
    return this.bytesSent - this.out.queued;
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

  private highWater(): number {
    const link = this.linkBytesPerMs();
    return link === undefined ? MIN_HIGH_WATER : Math.min(MAX_HIGH_WATER, Math.max(MIN_HIGH_WATER, link * QUEUE_MS));
  }

  onClose(err?: Error): void {
    this.closed = true;
    this.fail(err ? new ChannelClosed(`connection lost: ${err.message}`, err) : new ChannelClosed());
    this.drained?.();
    this.wake?.(); // a receiver waiting for the next message must learn the stream is gone
  }

  /**
   * Until the matching uncork, small frames (under CORK_BYTES) gather and go to the socket
   * together: a burst of 4 KiB deltas was a syscall each, a third of its cost.
   */
  cork(): void {
    this.out.cork();
  }

  uncork(): void {
    this.out.uncork();
  }

  /** Queues one message; resolves once the unsent backlog is below the high-water mark. */
  async send(m: Message): Promise<void> {
    if (this.failure && (this.closed || this.failure instanceof PeerAborted)) throw this.failure;
    if (m.type === MsgType.ERROR) this.errorSent = true;
    // The message's data is copied into the frame here, before any wait: callers may reuse their buffers once send() is called.
    const f = encodeFrame(m, this.frames && ((n) => this.frames!.take(n)));
    // Sealed in place: f goes as ciphertext, between the record's length and its tag.
    const sealed = this.sealer?.seal(f);
    const length = sealed ? sealed[0].length + f.length + sealed[2].length : f.length;
    if (this.rate) {
      const t0 = performance.now();
      await this.rate.take(length);
      this.waitedMs += performance.now() - t0;
    }
    this.bytesSent += length;
    if (sealed) for (const p of sealed) this.out.write(p);
    else this.out.write(f);
    if (this.out.queued === 0) this.frames?.release(f); // the socket took the whole frame
    this.observe();
    if (this.out.closed) throw this.failure ?? new ChannelClosed();
    if (this.out.queued > this.highWater()) {
      const t0 = performance.now();
      while (this.out.queued > this.highWater() && !this.closed) await new Promise<void>((r) => (this.drained = r));
      this.waitedMs += performance.now() - t0;
    }
    if (this.closed && this.failure) throw this.failure;
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
        if (Number.isFinite(left)) setTimeout(r, left);
      });
    }
  }

  /** Messages arrived and not yet taken. */
  pending(): number {
    return this.inbox.length;
  }

  /** The next message if one has arrived, without waiting; throws if the stream failed. */
  tryRecv(): Message | undefined {
    const m = this.take();
    if (m) return m;
    if (this.failure) throw this.failure;
    return undefined;
  }

    async expect<T extends Message["type"]>(type: T, timeoutMs = 30_000): Promise<Extract<Message, { type: T }>> {
    const m = await this.recv(timeoutMs);
    if (m.type === type) return m as Extract<Message, { type: T }>;
    throw new ProtocolError(`expected ${typeName(type)}, got ${typeName(m.type)}`);
  }

  close(): void {
    this.socket.end();
  }

  /**
   * Ends the stream once what is queued has gone out, and waits (bounded) for the peer to
   * hang up too: a process about to exit would otherwise lose its last words (an ERROR).
   */
  async shutdown(timeoutMs = 2000): Promise<void> {
    const end = Date.now() + timeoutMs;
    const tick = (set: (r: () => void) => void) => new Promise<void>((r) => (set(r), setTimeout(r, 50)));
    while (this.out.queued > 0 && !this.closed && Date.now() < end) await tick((r) => (this.drained = r));
    this.socket.end();
    while (!this.closed && Date.now() < end) await tick((r) => (this.wake = r));
  }

  /** Why the stream failed, if it did (an ERROR from the peer shows as PeerAborted). */
  get failedWith(): Error | undefined {
    return this.failure;
  }

  private fail(err: Error): void {
    this.failure ??= err;
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
