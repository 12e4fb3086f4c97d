// zstd for blocks on the wire, at a fixed level (`--compress zstd[:LEVEL]`, `none`) or at
// the level the link and the CPU call for (`auto`, compression-policy.ts). A block that
// does not shrink by at least 10 % is sent as it is: the receiver's decompression is then
// saved too. The receiver needs no setting: a zstd frame says how to decompress it.
// Units of 64 KiB and more are compressed off the event loop (Bun's zstd thread pool):
// a 4 MiB bulk run takes 0.75 s at level 19, and the loop must keep the link fed meanwhile.
// Sync, the socket's buffer (256 KiB on the WAN's source) ran dry in 0.4 s of each unit,
// and the 5 Mbit/s link was 86 % busy.
// Over a slow link, bulk runs go as pieces of one long-window stream instead of frames of
// their own (zstd-stream.ts): there the ratio is the migration's time.

import { UsageError } from "../errors.ts";
import { CompressionPolicy } from "./compression-policy.ts";
import { ProtocolError } from "./errors.ts";
import { StreamLevel } from "./stream-level.ts";
import { StreamDeflater } from "./zstd-stream.ts";

const WORTH_IT = 0.9;
const MIN_SIZE = 512;
/** zstd's own range; above 19 its windows take hundreds of MiB on each side. */
const MAX_LEVEL = 19;
/** Below this a unit is compressed on the loop: the hop to the thread pool would cost more than it saves. */
const OFF_LOOP_MIN = 64 * 1024;

/**
 * Wire bytes per ms (100 Mbit/s) under which bulk runs go as pieces of the stream. Above it the link
 * is not what a migration waits for, and the stream's long-distance matching would cost
 * CPU the link does not give back (level 3: 220 MB/s as a stream, faster as frames).
 */
const STREAM_BELOW_BYTES_PER_MS = 12_500;

function zstd(data: Uint8Array, level: number): Uint8Array | Promise<Uint8Array> {
  return data.length >= OFF_LOOP_MIN ? Bun.zstdCompress(data, { level }) : Bun.zstdCompressSync(data, { level });
}

/** `auto`, or a fixed zstd level (0: none). */
export type CompressSetting = "auto" | number;

/** `--compress`: auto, none, zstd (level 1) or zstd:LEVEL. */
export function parseCompress(spec: string): CompressSetting {
  if (spec === "auto") return "auto";
  if (spec === "none") return 0;
  if (spec === "zstd") return 1;
  const m = /^zstd:(\d+)$/.exec(spec);
  const level = m ? Number(m[1]) : NaN;
  if (level >= 1 && level <= MAX_LEVEL) return level;
  throw new UsageError(`cannot read --compress ${JSON.stringify(spec)}`, `use auto, none, zstd, or zstd:LEVEL with LEVEL from 1 to ${MAX_LEVEL}`);
}

/** What the compressor needs to know of the stream it feeds (a Channel). */
export interface LinkView {
  /** Wire bytes per ms the link takes, if it has been the bottleneck. */
  linkBytesPerMs(): number | undefined;
  /** Time the sender has waited for the link so far. */
  waitedMs: number;
  /** Whether bytes wait for the link now (absent: taken as yes). */
  hasBacklog?(): boolean;
}

export interface Compressed {
  data: Uint8Array;
  compressed: boolean;
  /** A piece of the connection's stream (see Flag.ZSTD_STREAM). */
  streamed?: boolean;
}

/** Compresses units (a bulk run, a delta) for one stream; in auto mode, learns the level as it goes. */
export class Compressor {
  private readonly policy?: CompressionPolicy;
  private readonly fixed: number;
  private last?: { at: number; waited: number };
  private stream?: { deflater: StreamDeflater; level: StreamLevel };
  /** Raw bytes sent at each level (0: as they were). */
  readonly rawByLevel = new Map<number, number>();
  /** Raw bytes sent as pieces of the stream. */
  streamedRaw = 0;
  /** Probes running beside the sending (one batch at a time). */
  private probing?: Promise<void>;

  /** `rttMs`: the link's round trip (auto starts uncompressed on a short one). */
  constructor(
    setting: CompressSetting,
    private readonly link: LinkView,
    rttMs?: number,
  ) {
    if (setting === "auto") this.policy = new CompressionPolicy(rttMs, link.linkBytesPerMs());
    this.fixed = setting === "auto" ? 0 : setting;
  }

  /** The level the next unit gets. */
  get level(): number {
    return this.policy?.level ?? this.fixed;
  }

  /**
   * `data` must stay as it is until this resolves. One unit at a time per compressor: the
   * policy learns from each in turn, and stream pieces must be sent in the order they were
   * made. `streamable`: the unit may go as a piece of the stream (bulk runs).
   */
  async compress(data: Uint8Array, streamable = false): Promise<Compressed> {
    let level = this.level;
    const t0 = performance.now();
    let out: Compressed;
    if (streamable && level > 0 && this.streaming()) {
      this.stream ??= { deflater: new StreamDeflater(), level: new StreamLevel() };
      level = this.stream.level.next(level, data.length);
      // Always sent as made, even if it did not shrink: the receiver's stream must see every piece.
      out = { data: await this.stream.deflater.piece(data, level), compressed: true, streamed: true };
      this.streamedRaw += data.length;
    } else {
      const c = data.length >= MIN_SIZE && level > 0 ? await zstd(data, level) : undefined;
      out = c && worthIt(data.length, c.length) ? { data: c, compressed: true } : { data, compressed: false };
    }
    const ms = performance.now() - t0;
    this.rawByLevel.set(level, (this.rawByLevel.get(level) ?? 0) + data.length);
    // A settled stream keeps its level (stream-level.ts): probes of others, frames of their
    // own at levels up to 19 beside the stream's window, would cost 60 MiB and tell little.
    const probe = !(out.streamed && this.stream!.level.settled);
    if (this.policy && data.length >= MIN_SIZE) await this.learn(data, level, out.data.length, ms, probe);
    return out;
  }

  /** Once the link is known slow, the connection's bulk keeps to the stream. */
  private streaming(): boolean {
    if (this.stream) return true;
    const rate = this.link.linkBytesPerMs();
    return rate !== undefined && rate < STREAM_BELOW_BYTES_PER_MS;
  }

  /** Frees the stream's window (the connection is over). */
  close(): void {
    this.stream?.deflater.close();
    this.stream = undefined;
  }

  /** Auto: tells the policy what this unit cost and the time around it, starts probes of other levels on it, lets it choose. */
  private async learn(data: Uint8Array, level: number, wire: number, ms: number, withProbes: boolean): Promise<void> {
    const p = this.policy!;
    // The policy tells idle gaps (nothing to send) from the sender's work.
    const wallMs = this.last && performance.now() - this.last.at;
    const waitedMs = this.last ? this.link.waitedMs - this.last.waited : 0;
    p.sent({ level, raw: data.length, wire, ms, wallMs, waitedMs });
    const link = this.link.linkBytesPerMs();
    if (withProbes && !this.probing) {
      const levels = p.probes(link);
      // A unit that waited for the link probes before the next goes: the link has its queue
      // to send meanwhile. Any other probes beside the sending, on zstd's own threads, and
      // the unit goes out now. Awaited always, probes held every unit back: over a long round
      // trip TCP's slow start measures as a slow link, so every level was probed (19: 0.7 s a
      // 4 MiB unit) while the link idled and stayed measured slow (1 Gbit/s at 100 ms moved
      // 26 Mbit/s). A copy: the caller reads its next unit into the same buffer.
      // Inline only while the link has its queue; what is left then is probed beside the sending.
      const rest = levels.length && waitedMs > 0 ? await this.probe(data, levels, true) : levels;
      if (rest.length) this.probing = this.probe(data.slice(), rest).then(() => undefined).finally(() => (this.probing = undefined));
    }
    p.decide(link);
    this.last = { at: performance.now(), waited: this.link.waitedMs };
  }

  /**
   * `whileBacklog`: only while the link has bytes queued to send meanwhile. In TCP's slow
   * start a fast link measures slow and its first unit waits, so every level was probed
   * before the second unit (16 and 19 on 4 MiB: 1.1 s) while the link, 1 Gbit/s at 100 ms,
   * had long drained its queue and idled. Returns the levels it left unprobed.
   */
  private async probe(data: Uint8Array, levels: number[], whileBacklog = false): Promise<number[]> {
    for (const [i, level] of levels.entries()) {
      if (whileBacklog && this.link.hasBacklog && !this.link.hasBacklog()) return levels.slice(i);
      const t0 = performance.now();
      const c = await Promise.resolve(zstd(data, level)).catch(() => undefined);
      if (!c) return [];
      this.policy!.note({ level, raw: data.length, wire: worthIt(data.length, c.length) ? c.length : data.length, ms: performance.now() - t0 });
    }
    return [];
  }
}

/** A block shrunk by less than 10 % goes as it is. */
function worthIt(rawLength: number, compressedLength: number): boolean {
  return compressedLength < rawLength * WORTH_IT;
}

export function decompress(data: Uint8Array, expectedLength: number): Uint8Array {
  let out: Uint8Array;
  try {
    out = Bun.zstdDecompressSync(data);
  } catch (cause) {
    throw new ProtocolError("a compressed block does not decompress", { cause });
  }
  if (out.length !== expectedLength) throw new ProtocolError(`a compressed block decompressed to ${out.length} bytes, not ${expectedLength}`);
  return out;
}
