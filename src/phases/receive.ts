// The destination's side of a migration: an explicit state machine.
//
//   waiting --HELLO/AUTH/READY--> receiving --BARRIER/CHECKSUM/DONE--> completed
//      ^                              |
//      +------ the link broke --------+          any other error: aborted
//                                                (the held NBD requests stay held)
//
// Once this side sends ERROR (on any abort) it never releases the image: the source
// relies on that to unfence safely. That promise is durable: the recording is written to
// the image's state file as abandoned before ERROR (or ROLLED_BACK) goes out, and no later
// process of this image takes it up again.
//
// The position reached is durable too (image-state.ts): it is written after each periodic
// fdatasync of the image, so it never runs ahead of the image. A destination killed and
// started again takes up from there, and a verified image is recorded as such before DONE
// is sent, so a source that lost DONE can connect again and ask (READY.verified).
//
// Bulk blocks and deltas are applied to the image as they arrive; delta sequence numbers
// must increase (coalescing leaves gaps). ACKs report what is applied; it is synced at the
// barrier (nothing at the source waits on an ACK's durability) and when a link breaks.
// READY on a resume says the same, so nothing applied is sent again.

import { existsSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { RegionDigests, REGION_SIZE } from "../disk/image/region-digest.ts";
import { describeImages, type ImageFile, imageSizes, openImage } from "../disk/image/image-set.ts";
import { WriteBehind } from "../disk/image/write-behind.ts";
import { type Channel, ChannelClosed, peerAborted } from "../net/channel.ts";
import { describeError } from "../errors.ts";
import { decompress } from "../net/compress.ts";
import { StreamInflater } from "../net/zstd-stream.ts";
import { ProtocolError } from "../net/errors.ts";
import { type Barrier, type Bulk, type Delta, DeltaOp, diskSizes, type Hello, MAX_STREAMS, msg, MsgType, type Redirect as RedirectMsg, sameDisks, typeName } from "../net/protocol.ts";
import { randomBytes } from "node:crypto";
import type { ImageStateFile, IncomingMarker } from "../disk/image/image-state.ts";
import { beforeKillPoint, killPoint } from "../util/kill-point.ts";
import type { Logger } from "../log.ts";
import { isZero } from "../util/zero.ts";
import { GcNudge } from "../util/gc.ts";
import { bulkResumeOffset, sendBaseHashes } from "./base-hashes.ts";
import { ReceiveError } from "./errors.ts";
import { type Credentials, destHandshake } from "./init.ts";

/** Where the receiver is; the position reached (bulk offset, next delta) lives beside it. */
export type ReceiverState =
  | { kind: "waiting" } // for the first connection, or for a resume after a broken link
  | { kind: "receiving" }
  | { kind: "completed"; digest: string }
  | { kind: "aborted"; reason: string };

const ACK_EVERY_MS = 200;
/**
 * A burst that has stopped is acknowledged once nothing more came for this long, not as
 * soon as the inbox is empty: the frames of a burst arrive a few at a time, and an ACK
 * (with the rehash before it) after each handful made the hand-off's last deltas cost
 * 30-40 us each on loopback, three times what the convergence estimate priced them at.
 */
const IDLE_ACK_MS = 1;
/** A quiet stream: syncs in a row before the last one is taken for a clean image's, and how often it is looked at (ms). */
const CLEAN_SYNCS = 2;
const SYNC_POLL_MS = 20;
const FLUSH_EVERY_MS = 1000;

/**
 * Creates the images (sparse, the source's sizes) or checks that existing ones fit, every
 * one checked before any is created: a mismatch leaves nothing behind. `fresh`: all created
 * here (all holes), so the bulk copy need not write zeros and no base hashes are worth sending.
 */
export function prepareImages(paths: readonly string[], sizes: readonly number[]): { fresh: boolean } {
  if (sizes.length !== paths.length)
    throw new ReceiveError(`the source's VM has ${sizes.length} disk${sizes.length === 1 ? "" : "s"}; this destination was given ${paths.length} image${paths.length === 1 ? "" : "s"} (--image once per disk, in the source's order)`);
  paths.forEach((path, i) => {
    if (!existsSync(path)) return;
    const have = statSync(path).size;
    if (have !== sizes[i]) throw new ReceiveError(`existing image ${path}${paths.length > 1 ? ` (disk${i})` : ""} is ${have} bytes; the source's is ${sizes[i]}`);
  });
  let fresh = true;
  paths.forEach((path, i) => {
    if (existsSync(path)) return void (fresh = false);
    writeFileSync(path, new Uint8Array(0), { mode: 0o600 });
    truncateSync(path, sizes[i]!);
  });
  return { fresh };
}

const PAGE = 4096;

/**
 * Writes a bulk block into a fresh (all-hole) image without allocating its all-zero
 * pages, so the image stays as sparse as the source's. Safe because a fresh image reads
 * zero there already, and any later change to those pages arrives as a delta.
 */
function writeSparse(image: ImageFile, offset: number, data: Uint8Array): void {
  // The last page may be partial (an image whose size is no multiple of a page): the walk
  // ends one step past the data, so a run that reaches the end is written too.
  let runStart = -1;
  for (let at = 0; ; at += PAGE) {
    const page = at < data.length ? data.subarray(at, Math.min(at + PAGE, data.length)) : undefined;
    const zero = !page || isZero(page);
    if (!zero && runStart < 0) runStart = at;
    if (zero && runStart >= 0) {
      image.write(offset + runStart, data.subarray(runStart, Math.min(at, data.length)), false);
      runStart = -1;
    }
    if (!page) return;
  }
}

/**
 * completed; dropped: the link broke, a resume may follow; rejected: the handshake failed,
 * nothing changed; answered: a source asked after a migration completed here, and was told.
 */
export type ServeOutcome = "completed" | "dropped" | "rejected" | "answered";

/** What a restarted destination knows of its incoming migration (the fields HELLO gave). */
type KnownHello = Pick<Hello, "name" | "size" | "blockSize" | "recording" | "disks">;

/**
 * One migration's receiving side. It outlives a connection: when the stream breaks before
 * the barrier, the image and the position reached stay, and the next connection resumes.
 */
export class Receiver {
  state: ReceiverState = { kind: "waiting" };
  private image?: ImageFile;
  private writeback?: Promise<void>;
  /** How long the last background sync took (ACK's syncMs: the barrier's sync costs about that again). */
  private lastSyncMs = 0;
  private writebackError?: unknown;
  private fresh = false;
  private hello?: KnownHello;
  private bulkOffset = 0;
  private bulkDone = false;
  private nextSeq?: bigint;
  /** The copy pass being applied: the record it stands for, and its frames applied so far. */
  private pass?: { seq: bigint; copied: number };
  private digests?: RegionDigests;
  /** Regions below this one are complete in bulk order and hashed (or dirtied since). */
  private bulkHashedTo = 0;
  /** The bulk copy's pages, dropped once the digest has read them back (write-behind.ts). */
  private behind?: WriteBehind;
  /** The connection being received on, and what its further connections must name to join it (lanes.ts). */
  private session?: { token: string; ch: Channel; streams: number; recording: string };

  constructor(
    private readonly opts: {
      /** The VM's images, in disk order (one per disk of the source's VM). */
      images: readonly string[];
      creds: Credentials;
      log: Logger;
      /** The image's durable state: where a killed destination got to, and what it must never release. */
      state?: ImageStateFile;
      /** The image is opened for the migration (before any byte is written): start serving it, held. */
      onAuthenticated?: (hello: KnownHello) => Promise<void>;
      /** The image is verified; called before DONE is sent (the image becomes the VM's disk here). */
      onVerified?: (digest: string) => void;
      /** The source asks for this end of the network redirect (src/redirect/); a failure aborts the migration. */
      onRedirect?: (m: RedirectMsg, ch: Channel) => Promise<void>;
    },
  ) {
    this.restore();
  }

  /** Takes up where a killed destination of this image got to (its durable position). */
  private restore(): void {
    const inc = this.opts.state?.state.incoming;
    if (!inc) return;
    if (inc.state === "verified") {
      this.hello = inc;
      this.bulkDone = true;
      this.bulkOffset = inc.size;
      this.state = { kind: "completed", digest: inc.digest ?? "" };
      return;
    }
    if (inc.state !== "receiving" || !this.opts.images.every((p) => existsSync(p)) || !sameDisks(inc, { size: inc.size, disks: imageSizes(this.opts.images) })) return;
    this.hello = inc;
    this.fresh = false;
    this.bulkOffset = inc.bulkOffset;
    this.bulkDone = inc.bulkDone;
    this.nextSeq = inc.nextSeq === "0" ? undefined : BigInt(inc.nextSeq);
    this.digests = new RegionDigests(inc.size);
    this.opts.log.info(`taking up the incoming migration of ${inc.name} (${inc.recording}) where a killed destination left it: bulk ${inc.bulkDone ? "done" : inc.bulkOffset}, next delta ${inc.nextSeq}`);
  }

  /** Read through a method: the compiler would narrow the field across the awaits that change it. */
  private isCompleted(): boolean {
    return this.state.kind === "completed";
  }

  /** The recording the image here was verified for, if it was. */
  get verifiedRecording(): string | undefined {
    return this.state.kind === "completed" ? this.hello?.recording : undefined;
  }

  private persist(state: IncomingMarker["state"], digest?: string): void {
    const h = this.hello;
    if (!this.opts.state || !h) return;
    this.opts.state.update((s) => {
      s.incoming = {
        name: h.name,
        recording: h.recording,
        size: h.size,
        disks: h.disks,
        blockSize: h.blockSize,
        bulkOffset: this.bulkDone ? h.size : this.bulkOffset,
        bulkDone: this.bulkDone,
        nextSeq: String(this.nextSeq ?? 0n),
        state,
        digest,
        at: new Date().toISOString(),
      };
      if (state === "abandoned") s.abandoned = [...new Set([...(s.abandoned ?? []), h.recording])].slice(-16);
    });
  }

  /** Syncs the image, then records the position: the record never runs ahead of the data. */
  /**
   * Starts an fdatasync on the thread pool (one at a time) and goes on applying: the
   * barrier's own sync is downtime, and without this it had up to a second of writes to
   * flush (38 ms of a 61 ms hand-off under a random writer). A failure is kept for the barrier.
   */
  private nudgeWriteback(): void {
    if (this.writeback || !this.image) return;
    const t0 = performance.now();
    this.writeback = this.image
      .flush()
      .catch((err) => {
        this.writebackError ??= err;
      })
      .finally(() => {
        this.lastSyncMs = performance.now() - t0;
        this.writeback = undefined;
      });
  }

  private async checkpoint(): Promise<void> {
    await this.image?.flush();
    this.persist("receiving");
  }

  private readonly gc = new GcNudge();

  /** How far this migration is (`wanmig status` on the destination). */
  progress(): { state: string; bulkOffset: number; size: number; nextSeq: string } {
    return { state: this.state.kind, bulkOffset: this.bulkDone ? (this.hello?.size ?? 0) : this.bulkOffset, size: this.hello?.size ?? 0, nextSeq: String(this.nextSeq ?? 0n) };
  }

  /**
   * Runs one connection; "dropped" means the link broke and a resume is possible.
   * `authenticated`: the HELLO of a channel whose handshake ran already (see `authenticate`).
   */
  async serve(ch: Channel, authenticated?: Hello): Promise<ServeOutcome> {
    if (this.state.kind === "completed") return this.answerCompleted(ch, authenticated);
    if (this.state.kind !== "waiting") {
      await ch.send(msg.error(`this destination's migration is ${this.state.kind}`)).catch(() => undefined);
      ch.close();
      throw new ReceiveError(`a connection arrived while the migration is ${this.state.kind}`);
    }
    const hello = authenticated ?? (await this.authenticate(ch));
    if (!hello) return "rejected";
    try {
      await this.accept(ch, hello);
      await ch.send(msg.ready(this.bulkDone ? hello.size : this.bulkOffset, this.nextSeq ?? 0n, !this.fresh, undefined, this.openSession(ch, hello)));
      if (!this.fresh && !this.bulkDone) this.streamBaseHashes(ch, hello);
      this.state = { kind: "receiving" };
      // A copy pass broken off with the last connection is sent again whole (from before it).
      this.pass = undefined;
      this.opts.log.info(`receiving ${hello.name} (${hello.size} bytes) into ${describeImages(this.opts.images)}${this.bulkOffset || this.nextSeq ? `, resuming at bulk ${this.bulkDone ? "end" : this.bulkOffset}, delta ${this.nextSeq ?? 0n}` : ""}`);
      const outcome = await this.loop(ch, hello);
      this.session = undefined;
      return outcome;
    } catch (err) {
      return this.afterFailure(ch, err);
    }
  }

  /**
   * A source that offered several connections gets a session for them: further connections
   * that name it (and prove themselves, each with keys of its own) join this one as lanes.
   * A new session per connection: a lane left over from a broken one cannot join the next.
   */
  private openSession(ch: Channel, hello: Hello): { streams: number; session: string } | undefined {
    this.session = undefined;
    if (!hello.streams || hello.streams < 2) return undefined;
    const s = { token: randomBytes(16).toString("hex"), ch, streams: Math.min(hello.streams, MAX_STREAMS), recording: hello.recording };
    this.session = s;
    return { streams: s.streams, session: s.token };
  }

  /**
   * A further connection of the source, authenticated: it joins the channel being received
   * on, or (another session, a lane taken, nothing being received) is told no and closed,
   * and the migration goes on without it.
   */
  async join(ch: Channel, hello: Hello): Promise<void> {
    const s = this.session;
    const j = hello.join!;
    const why =
      !s || this.state.kind !== "receiving" || s.ch.closed
        ? "no migration is being received here"
        : j.session !== s.token || hello.recording !== s.recording
          ? "it names a session that is not this destination's current one"
          : j.lane >= s.streams
            ? `stream ${j.lane} is past the ${s.streams} agreed`
            : undefined;
    try {
      if (why) throw new ProtocolError(why);
      s!.ch.join(j.lane, ch, s!.streams, false);
      await ch.send(msg.joined(j.lane));
    } catch (err) {
      this.opts.log.warn(`refused stream ${j.lane} of the source: ${(err as Error).message}`);
      await ch.send(msg.error(`stream ${j.lane} not joined: ${(err as Error).message}`)).catch(() => undefined);
      await ch.shutdown(500);
    }
  }

  /** A connection that failed: a broken link waits for a resume; anything else abandons this copy, durably, and says why. */
  private async afterFailure(ch: Channel, err: unknown): Promise<ServeOutcome> {
    this.session = undefined;
    if (err instanceof ChannelClosed && this.hello && !this.isCompleted()) {
      // Every lane goes: the source resumes on fresh connections, in one new session.
      ch.close();
      await this.checkpoint();
      this.opts.log.warn(`the link broke (${err.message}); waiting for the source to resume`);
      this.state = { kind: "waiting" };
      return "dropped";
    }
    // DONE may not have gone out; the image is verified and recorded so all the same,
    // and a source that missed DONE asks again (answerCompleted).
    if (this.isCompleted()) {
      this.opts.log.warn(`the link broke as DONE went out (${(err as Error).message}); the image is verified and served here`);
      this.image?.close();
      return "completed";
    }
    this.state = { kind: "aborted", reason: (err as Error).message };
    // Durable before the source can hear of it: this copy is never released, by any process.
    try {
      this.persist("abandoned");
    } catch (cause) {
      this.opts.log.error(`cannot record that this copy is abandoned: ${(cause as Error).message}`);
    }
    this.image?.close();
    // Say why before hanging up; the source then knows we will never release this image.
    if (!ch.errorSent && !peerAborted(err)) await ch.send(msg.error(describeError(err).replace(/\n\s*/g, "; "))).catch(() => undefined);
    await ch.shutdown();
    throw err instanceof ReceiveError ? err : new ReceiveError("migration aborted", { cause: err });
  }

  private async accept(ch: Channel, hello: Hello): Promise<void> {
    if (this.opts.state?.state.abandoned?.includes(hello.recording)) {
      await ch.send(msg.error(`the migration of ${hello.recording} was given up here; this copy is never released`));
      throw new ReceiveError(`the source asked to resume ${hello.recording}, which was given up here`);
    }
    if (this.hello) {
      if (hello.name !== this.hello.name || !sameDisks(hello, this.hello)) {
        await ch.send(msg.error(`a migration of ${this.hello.name} (${this.hello.size} bytes) is under way here`));
        throw new ReceiveError(`a different migration tried to resume: ${hello.name}, ${hello.size} bytes`);
      }
      if (hello.recording !== this.hello.recording) this.startOver(hello);
    } else {
      try {
        this.fresh = prepareImages(this.opts.images, diskSizes(hello)).fresh;
      } catch (cause) {
        await ch.send(msg.error(`destination cannot use ${describeImages(this.opts.images)}: ${(cause as Error).message}`));
        throw cause;
      }
      this.hello = hello;
      this.digests = new RegionDigests(hello.size);
    }
    if (!this.image) {
      try {
        this.image = openImage(this.opts.images, false);
        this.behind = new WriteBehind(this.image.pageCache());
      } catch (cause) {
        await ch.send(msg.error(`destination cannot use ${describeImages(this.opts.images)}: ${(cause as Error).message}`));
        throw cause;
      }
      try {
        await this.opts.onAuthenticated?.(this.hello);
      } catch (cause) {
        await ch.send(msg.error(`destination cannot serve ${describeImages(this.opts.images)}: ${(cause as Error).message}`));
        throw cause;
      }
    }
    this.persist("receiving");
  }

  /**
   * The handshake alone: the source's HELLO once it proved itself, or undefined (a stranger,
   * a wrong secret or another version, turned away: anyone who can reach the port must not
   * end us). It touches nothing of the migration, so connections can run it side by side.
   */
  async authenticate(ch: Channel): Promise<Hello | undefined> {
    try {
      return await destHandshake(ch, this.opts.creds);
    } catch (err) {
      this.opts.log.warn(`refused a connection: ${describeError(err).replace(/\n\s*/g, "; ")}`);
      await ch.shutdown(500);
      return undefined;
    }
  }

  /**
   * A source that lost DONE (or was killed after it) asks again: tell it the image is
   * verified, with the digest, for the recording that was verified here.
   */
  private async answerCompleted(ch: Channel, authenticated?: Hello): Promise<ServeOutcome> {
    const hello = authenticated ?? (await this.authenticate(ch));
    if (!hello) return "rejected";
    const st = this.state as { kind: "completed"; digest: string };
    if (hello.recording !== this.hello?.recording || !sameDisks(hello, this.hello)) {
      await ch.send(msg.error(`this destination completed another migration (${this.hello?.recording}) and serves it`)).catch(() => undefined);
      await ch.shutdown();
      return "answered";
    }
    await ch.send(msg.ready(hello.size, this.nextSeq ?? 0n, false, st.digest));
    this.opts.log.info(`the source asked after ${hello.recording}: told it the image is verified (${st.digest.slice(0, 16)}…)`);
    await ch.shutdown(2000);
    return "answered";
  }

  private async loop(ch: Channel, hello: KnownHello): Promise<ServeOutcome> {
    // The connection's zstd stream (Flag.ZSTD_STREAM): a new connection starts a new one.
    const inflater = new StreamInflater();
    try {
      return await this.receiveOn(ch, hello, inflater);
    } finally {
      inflater.close();
    }
  }

  private async receiveOn(ch: Channel, hello: KnownHello, inflater: StreamInflater): Promise<ServeOutcome> {
    const image = this.image!;
    let lastAck = Date.now();
    let lastFlush = lastAck;
    let ackOwed = false;
    const ack = async () => {
      this.digests!.refresh(this.opts.images);
      await ch.send(msg.ack(this.bulkOffset, this.nextSeq ?? 0n, this.pass?.copied ?? 0, this.lastSyncMs));
      this.nudgeWriteback();
      lastAck = Date.now();
      ackOwed = false;
    };
    // Once the stream goes quiet, syncs run back to back until one finds the image clean,
    // and its time is reported: the source costs the barrier's sync by the last one it
    // heard of, and with no writer that was the bulk's last flush (an 8 TiB thin disk's
    // hand-off took 14-21 ms, estimated at 56-96).
    let idleSyncs = CLEAN_SYNCS; // nothing to report before the first message
    let reportedSyncMs = this.lastSyncMs;
    const quietWait = () => (ackOwed ? IDLE_ACK_MS : this.writeback || idleSyncs < CLEAN_SYNCS || this.lastSyncMs !== reportedSyncMs ? SYNC_POLL_MS : undefined);
    for (;;) {
      const wait = quietWait();
      const m = wait === undefined ? await ch.recv() : await ch.recvWithin(wait);
      if (!m) {
        if (ackOwed) await ack();
        else if (this.writeback) continue;
        else if (idleSyncs < CLEAN_SYNCS) {
          idleSyncs++;
          this.nudgeWriteback();
        } else {
          reportedSyncMs = this.lastSyncMs;
          await ch.send(msg.ack(this.bulkOffset, this.nextSeq ?? 0n, this.pass?.copied ?? 0, reportedSyncMs));
        }
        continue;
      }
      idleSyncs = 0;
      switch (m.type) {
        case MsgType.BULK:
          await this.applyBulk(ch, m, hello, inflater);
          break;
        case MsgType.ZERO:
          checkRange(m.offset, m.length, hello.size);
          this.hashBulkBefore(m.offset);
          await image.zero(m.offset, m.length, false, true);
          break;
        case MsgType.BULK_END:
          await this.endBulk(hello);
          lastFlush = Date.now();
          break;
        case MsgType.ROLLBACK:
          throw await this.rollBack(ch, m.reason, hello);
        case MsgType.DELTA:
          await this.applyDelta(ch, m, hello);
          break;
        case MsgType.REDIRECT:
          if (!this.opts.onRedirect) throw new ReceiveError("the source asked for a network redirect, which this destination does not do");
          await this.opts.onRedirect(m, ch);
          await ch.send(msg.redirectReady(m.iface));
          break;
        case MsgType.BARRIER:
          return this.finish(ch, m);
        default:
          throw new ProtocolError(`unexpected ${typeName(m.type)} while receiving`);
      }
      // When a burst is applied (and every so often): rehash what it touched and ACK. The
      // source switches over only once what it sent is acknowledged, so the barrier finds
      // little left to hash (pieces of 4 KiB: what was written, no more, even for a random
      // writer). The periodic sync keeps the barrier's own sync small.
      const now = Date.now();
      if (now - lastFlush > FLUSH_EVERY_MS) {
        await this.checkpoint();
        lastFlush = now;
      }
      if (now - lastAck > ACK_EVERY_MS) await ack();
      else if (!ch.pending() && (m.type === MsgType.DELTA || m.type === MsgType.BULK_END)) ackOwed = true;
    }
  }

  /** Phase 1, a bulk block: written where it belongs (holes kept on a fresh image), its regions hashed once complete. */
  private async applyBulk(ch: Channel, m: Bulk, hello: KnownHello, inflater: StreamInflater): Promise<void> {
    checkRange(m.offset, m.length, hello.size);
    this.hashBulkBefore(m.offset);
    const data = m.streamed ? await inflater.piece(m.data, m.length) : m.compressed ? decompress(m.data, m.length) : m.data;
    if (this.fresh) writeSparse(this.image!, m.offset, data);
    else this.image!.write(m.offset, data, false);
    this.behind?.written(m.offset, m.length);
    this.bulkOffset = Math.max(this.bulkOffset, m.offset + m.length);
    this.gc.add(m.length);
    ch.recycle(m.data); // written (or decompressed) above: nothing holds it
  }

  /**
   * The bulk copy is whole. It is written back now, while the VM still runs at the source:
   * left to the barrier's sync, hundreds of MB of page cache would be downtime.
   */
  private async endBulk(hello: KnownHello): Promise<void> {
    this.bulkDone = true;
    this.bulkOffset = hello.size;
    this.hashBulkBefore(hello.size);
    await this.checkpoint();
    // The image is clean now: what a sync costs here is what the barrier's costs if the
    // deltas bring little, and the ACK for BULK_END tells the source so before it can fence.
    // Left at the bulk's last background sync, a thin 8 TiB disk's estimate read 45 ms for 19.
    const t0 = performance.now();
    await this.image?.flush();
    this.lastSyncMs = performance.now() - t0;
  }

  /** Phase 2, a delta: applied in order, its region marked for rehashing. */
  private async applyDelta(ch: Channel, m: Delta, hello: KnownHello): Promise<void> {
    // Gaps are allowed (coalescing drops records); going backwards never is.
    if (this.nextSeq !== undefined && m.seq < this.nextSeq) throw new ProtocolError(`delta ${m.seq} arrived after ${this.nextSeq - 1n}: deltas must come in order`);
    // A copy pass's frames all name the record it stands for, and nothing else comes
    // between them (copy-pass.ts: the pass must be whole before nextSeq moves past it).
    if (this.pass && this.pass.seq !== m.seq) throw new ProtocolError(`delta ${m.seq} arrived inside the copy pass for ${this.pass.seq}`);
    checkRange(m.offset, m.length, hello.size);
    if (m.op === DeltaOp.ZERO) await this.image!.zero(m.offset, m.length, false, true);
    else {
      this.image!.write(m.offset, m.compressed ? decompress(m.data, m.length) : m.data, false);
      ch.recycle(m.data); // written above, synchronously: nothing holds it
    }
    this.digests!.markDirty(m.offset, m.length);
    if (m.op === DeltaOp.COPY) this.pass = { seq: m.seq, copied: (this.pass?.copied ?? 0) + 1 };
    else {
      this.pass = undefined;
      this.nextSeq = m.seq + 1n;
    }
  }

  /**
   * The source rolled the migration back. Durable first: once the source hears ROLLED_BACK it
   * lifts its fence, and from then on this copy must never serve, whichever process of ours
   * comes next. Returns the error that ends the connection.
   */
  private async rollBack(ch: Channel, reason: string, hello: KnownHello): Promise<ReceiveError> {
    this.state = { kind: "aborted", reason: `rolled back by the source: ${reason}` };
    this.persist("abandoned");
    await ch.send(msg.rolledBack(hello.recording));
    this.opts.log.warn(`the source rolled the migration back (${reason}); this copy is never released`);
    await ch.shutdown(2000);
    this.image?.close();
    return new ReceiveError(`the source rolled the migration back: ${reason}`);
  }

  /**
   * A source run with another delta log (the first one died, and its log with it): our
   * positions refer to a log it cannot ship, so start from zero. What the image holds now
   * is a base: only blocks that differ travel again.
   */
  private startOver(hello: KnownHello): void {
    this.opts.log.warn(`the source ships a new delta log (${hello.recording}); starting over, with what is here as a base`);
    this.hello = hello;
    this.fresh = false;
    this.bulkOffset = 0;
    this.bulkDone = false;
    this.nextSeq = undefined;
    this.digests = new RegionDigests(hello.size);
    this.bulkHashedTo = 0;
  }

  /** Runs beside the receive loop; a failure closes the channel, which the loop reports. */
  private streamBaseHashes(ch: Channel, hello: KnownHello): void {
    sendBaseHashes(ch, this.opts.images, bulkResumeOffset(this.bulkOffset, hello.blockSize), hello.blockSize).catch((err) => {
      if (err instanceof ChannelClosed) return;
      this.opts.log.error(`cannot hash the base image: ${(err as Error).message}`);
      ch.send(msg.error(`the destination cannot read its base image: ${(err as Error).message}`)).finally(() => ch.close());
    });
  }

  /** Bulk blocks arrive in offset order: every region ending at or before `offset` is complete. */
  private hashBulkBefore(offset: number): void {
    const upTo = Math.floor(offset / REGION_SIZE);
    if (upTo <= this.bulkHashedTo) return;
    this.digests!.hashRange(this.opts.images, this.bulkHashedTo, upTo);
    this.bulkHashedTo = upTo;
    this.behind?.readTo(upTo * REGION_SIZE);
  }

  private async finish(ch: Channel, m: Barrier): Promise<ServeOutcome> {
    killPoint("dest-barrier");
    if (this.pass) throw new ProtocolError(`barrier arrived inside the copy pass for ${this.pass.seq}`);
    if (this.nextSeq !== undefined && BigInt(m.lastSeq) !== this.nextSeq - 1n)
      throw new ProtocolError(`barrier says the last delta is ${m.lastSeq}, we applied up to ${this.nextSeq - 1n}`);
    const t0 = performance.now();
    // Our own sync covers every write applied (fdatasync also waits for pages a background
    // sync is writing), so a background sync under way is not waited for first: its time
    // overlaps ours instead of adding to the downtime. Its error is still taken: a failed
    // writeback's error is reported once, and a later sync may succeed without the data.
    await Promise.all([this.writeback, this.image!.flush()]);
    if (this.writebackError) throw new ReceiveError(`cannot sync the image: ${(this.writebackError as Error).message}`);
    const t1 = performance.now();
    const rehashed = this.digests!.refresh(this.opts.images, { all: true });
    const digest = this.digests!.digest();
    this.opts.log.info(`barrier: image synced in ${Math.round(t1 - t0)} ms, ${rehashed} regions rehashed in ${Math.round(performance.now() - t1)} ms`);
    // An empty digest in the barrier: the source hashed while we did; it follows now.
    const theirs = m.digest || (await ch.expect(MsgType.CHECKSUM, 10 * 60 * 1000)).digest;
    if (digest !== theirs) throw new ReceiveError(`image digest mismatch: ours ${digest}, source ${theirs}`);
    // Verified: durable before DONE, so that a restart of ours serves it, and a source that
    // loses DONE can ask again and hear the same answer.
    this.persist("verified", digest);
    this.opts.onVerified?.(digest);
    this.state = { kind: "completed", digest };
    killPoint("dest-verified");
    await ch.send(msg.done(digest));
    await beforeKillPoint("dest-done");
    killPoint("dest-done");
    this.opts.log.info(`image verified (digest ${digest.slice(0, 16)}…); releasing held I/O`);
    this.image!.close();
    ch.close();
    return "completed";
  }
}

function checkRange(offset: number, length: number, size: number): void {
  if (offset + length > size) throw new ProtocolError(`write of ${length} bytes at ${offset} is past the ${size}-byte image`);
}
