// Adaptive compression (`--compress auto`): the zstd level that moves the most image bytes
// per second through this link with this CPU, chosen again after every unit sent.
//
// A level's goodput (raw bytes per ms) is the smaller of two rates:
//   - the CPU's: 1 / (its compression cost + the sender's other work), per raw byte;
//   - the link's: the link's wire rate / the level's ratio (wire bytes per raw byte).
// Level 0 sends blocks as they are: ratio 1, no compression cost.
//
// What is measured, not assumed: each level's ratio and cost on this image's data, the
// sender's other cost per byte, and the link's wire rate (by the channel, only while bytes
// wait for it). The level in use is measured on every unit; other levels by compressing a
// unit a second time without sending it (a probe), in turn. A probe is made only if it
// fits in the time the link leaves the CPU: while the link is the bottleneck every unit,
// else one in PROBE_EVERY. Levels not yet measured are costed from PRIOR_NS_PER_BYTE.
//
// Why every level is compared, not only the neighbours: zstd's ratio is flat from level 6
// to 15 and drops again from 16 (its optimal parsers): on shared libraries in 1 MiB units,
// 6 keeps 0.334, 15 keeps 0.329, 19 keeps 0.302. A step-by-step climb stops on the plateau.
// The ladder leaves out levels that gain nothing on their neighbours here (2, 4-5, 7-8,
// 10-15, 17-18), so fewer probes measure what matters.
//
// Why a move on a fast link is a trial: a receiver bound by its own CPU looks like a link, but its
// rate in wire bytes falls as the level rises (it decompresses more per wire byte), and two
// ends sharing two cores (loopback) pay for compression twice; the model cannot see either.
// So once TRIAL_UNITS units have gone at a new level, its goodput as lived (raw bytes over
// the wall time, waits included) must not fall below the old level's, or the move is
// undone and that level is held off for a while, twice as long each time. A level
// that stays put a while tries the one below in the same way (on loopback the model keeps
// level 1; none is 50 % faster there).
//
// Where it starts: before the link is measured (200 ms of backlog) the first MiBs already
// go out. Over a long round trip (a WAN's) at level 1: a MiB sent raw costs a 5 Mbit/s link
// 1.7 s, at level 1 0.6 s. Over a short one (a LAN's, loopback) at 0: the link is likely
// faster than the compressor, and a receiver bound by its own CPU is measured at its best
// only from 0 (from 1 it looks slower than it is, and the model keeps level 1: loopback
// runs took 2.3-3.1 s against 1.8 s uncompressed).
//
// Hysteresis: a move up must promise MARGIN_UP more goodput; a move down is taken when it
// loses nothing (within MARGIN_DOWN): equal goodput (random data, which every level sends
// raw) goes to the cheaper level.

/** zstd levels tried, 0 = not compressed. */
export const LADDER = [0, 1, 3, 6, 9, 16, 19] as const;
/** Compression cost per raw byte before a level is measured (shared libraries, this class of machine). */
const PRIOR_NS_PER_BYTE: Record<number, number> = { 0: 0, 1: 3, 3: 3.6, 6: 8.5, 9: 13, 16: 104, 19: 164 };

/** A round trip under this starts uncompressed (see above). */
export const LAN_RTT_MS = 10;
const ALPHA = 0.3;
const PROBE_EVERY = 16;
/** A level that keeps this much of the data gains nothing worth its CPU. */
const INCOMPRESSIBLE_RATIO = 0.97;
const MIN_MEASURED_UNIT = 64 * 1024;
const MAX_BASE_NS = 50;
/**
 * At most, on a fast link: every level is still measured every three units, and the CPU
 * stays free for the next unit. On a slow one every level that fits in the link's time is
 * probed at once, so the second unit already knows them all (a 4 MiB unit at level 1 costs
 * a 5 Mbit/s link 0.4 s more than at 19).
 */
const PROBES_PER_UNIT = 2;
const MARGIN_UP = 0.05;
const MARGIN_DOWN = 0.01;
const TRIAL_UNITS = 2;
/**
 * Wire bytes per ms under which the link is taken for a link, and the model trusted without
 * trials: no receiver's CPU is that slow per byte (hashing and writing ~400 MB/s here,
 * decompressing faster). Trials there would only mislead: a WAN's units take a second
 * each, and the data changes under them (the start of an OS image compresses 9:1, its
 * middle 2.5:1) more than the levels differ.
 */
const TRUST_MODEL_BELOW = 12_500;
const HOLD_UNITS = 16;
const MAX_HOLD_UNITS = 1024;

/** One compression of one unit: the one sent, or a probe. */
export interface CompressionSample {
  level: number;
  /** Bytes before compression. */
  raw: number;
  /** Bytes as they would cross the wire (never more than raw: such a block goes as it is). */
  wire: number;
  /** Time spent compressing. */
  ms: number;
}

/** A unit sent, with the time around it. */
export interface UnitSent extends CompressionSample {
  /** Wall time since the previous unit was sent (undefined: the first). */
  wallMs?: number;
  /** Of that, time spent waiting for the link. */
  waitedMs: number;
}

interface Estimate {
  /** Wire bytes per raw byte. */
  ratio: number;
  /** Compression time per raw byte. */
  nsPerByte: number;
  samples: number;
  /** Raw bytes per ms of wall time while this level was the one sent (its goodput as lived). */
  achieved?: number;
}

const ewma = (old: number | undefined, sample: number) => (old === undefined ? sample : ALPHA * sample + (1 - ALPHA) * old);

export class CompressionPolicy {
  private readonly est: (Estimate | undefined)[] = LADDER.map((l) => (l === 0 ? { ratio: 1, nsPerByte: 0, samples: Infinity } : undefined));
  private at: number;
  private baseNsPerByte?: number;
  private units = 0;
  private lastProbe = 0;
  private linkBound = false;
  private trial?: { from: number; baseline: number; units: number };
  /** Per level: no move to it before this unit (a failed trial), and the next hold's length. */
  private readonly heldUntil: number[] = LADDER.map(() => 0);
  private readonly holdFor: number[] = LADDER.map(() => HOLD_UNITS);
  /** The unit the level last changed at (a level that stays put tries the one below). */
  private since = 0;

  /**
   * `rttMs`: the link's round trip, as far as known (undefined: taken for a long one);
   * `linkBytesPerMs`: its rate, if known already (--bandwidth's cap): a slow one starts
   * compressed whatever its round trip.
   */
  constructor(rttMs?: number, linkBytesPerMs?: number) {
    this.at = rttMs !== undefined && rttMs < LAN_RTT_MS && !this.trusts(linkBytesPerMs) ? 0 : 1;
  }

  /** The level for the next unit. */
  get level(): number {
    return LADDER[this.at]!;
  }

  /** The unit just sent at `level`. */
  sent(u: UnitSent): void {
    this.units++;
    this.note(u);
    this.linkBound = u.waitedMs > 0;
    // Small units (a 4 KiB delta) say more about the gaps between them than about the CPU
    // or the link; and no sender spends MAX_BASE_NS on a byte: such a gap was idle, or a
    // wait on something other than the link (a control call, the VM's next write), and
    // measures neither the sender's cost nor its goodput.
    if (u.wallMs === undefined || u.wallMs <= 0 || u.raw < MIN_MEASURED_UNIT) return;
    const base = ((u.wallMs - u.waitedMs - u.ms) * 1e6) / u.raw;
    if (base > MAX_BASE_NS) return;
    if (base >= 0) this.baseNsPerByte = ewma(this.baseNsPerByte, base);
    const e = this.est[this.at];
    if (e) e.achieved = ewma(e.achieved, u.raw / u.wallMs);
    if (this.trial) this.trial.units++;
  }

  /** Records a compression's ratio and cost (the unit sent, or a probe). */
  note(s: CompressionSample): void {
    const i = LADDER.indexOf(s.level as (typeof LADDER)[number]);
    if (i <= 0 || s.raw <= 0) return;
    const e = this.est[i];
    const ratio = Math.min(1, s.wire / s.raw);
    const ns = (s.ms * 1e6) / s.raw;
    this.est[i] = { ratio: ewma(e?.ratio, ratio), nsPerByte: ewma(e?.nsPerByte, ns), samples: (e?.samples ?? 0) + 1, achieved: e?.achieved };
  }

  /**
   * Levels to compress the unit just sent with as well (not sent), in turn: as many as fit
   * in the wall time the link leaves a raw byte beside what the unit costs (on a fast link
   * PROBES_PER_UNIT at most). Without such time, one neighbour every PROBE_EVERY units, so
   * a faster link or other data is seen.
   */
  probes(linkBytesPerMs?: number): number[] {
    if (!this.linkBound && !this.trusts(linkBytesPerMs) && this.units % PROBE_EVERY !== 0) return [];
    // Data no level compresses (random, encrypted, already compressed): every unit probed
    // twice at dearer levels cost a 2-core host the CPU its link needed (1 Gbit/s, 100 ms:
    // 282 Mbit/s with --compress auto, 526 with none). The cheapest level alone (zstd gives
    // up on random input fast) still sees, unit by unit, data that turns compressible.
    if (this.incompressible() && this.units % PROBE_EVERY !== 0) return this.at === 1 ? [] : [LADDER[1]];
    // The link's time for a raw byte at this level, once measured (what was lived can be
    // inflated by the first units, which only filled buffers).
    const here = this.est[this.at]!;
    const perByte = linkBytesPerMs ? here.ratio / linkBytesPerMs : here.achieved ? 1 / here.achieved : 0;
    let left = (this.linkBound || this.trusts(linkBytesPerMs) ? perByte * 1e6 : 0) - this.costNs(this.at) - (this.baseNsPerByte ?? 0);
    const out: number[] = [];
    const from = this.lastProbe;
    for (let k = 1; k < LADDER.length; k++) {
      const i = (from + k) % LADDER.length;
      if (i === 0 || i === this.at) continue;
      const cost = this.costNs(i);
      const neighbour = Math.abs(i - this.at) === 1 && out.length === 0;
      const capped = out.length >= PROBES_PER_UNIT && !this.trusts(linkBytesPerMs);
      if ((cost > left && !neighbour) || capped) continue;
      left -= cost;
      this.lastProbe = i;
      out.push(LADDER[i]!);
    }
    return out;
  }

  /** Two levels or more measured, and every one keeps nearly all of the data. */
  private incompressible(): boolean {
    const measured = this.est.filter((e, i) => i > 0 && e && e.samples > 0);
    return measured.length >= 2 && measured.every((e) => e!.ratio >= INCOMPRESSIBLE_RATIO);
  }

  /** A slow link is a link: the model is trusted there, without trials (TRUST_MODEL_BELOW). */
  private trusts(linkBytesPerMs?: number): boolean {
    return linkBytesPerMs !== undefined && linkBytesPerMs < TRUST_MODEL_BELOW;
  }

  /** Raw bytes per ms a level would move, if it has been measured; `linkBytesPerMs` undefined: the link has never been the bottleneck. */
  goodput(level: number, linkBytesPerMs?: number): number | undefined {
    const e = this.est[LADDER.indexOf(level as (typeof LADDER)[number])];
    if (!e || e.samples < 1) return undefined;
    const cpu = e.nsPerByte + (this.baseNsPerByte ?? 0);
    const byCpu = cpu > 0 ? 1e6 / cpu : Infinity;
    const byLink = linkBytesPerMs === undefined ? Infinity : linkBytesPerMs / e.ratio;
    return Math.min(byCpu, byLink);
  }

  /** Changes level if another promises more goodput (or as much for less CPU), or to try the one below; true if it changed. */
  decide(linkBytesPerMs?: number): boolean {
    if (this.trial) return this.trial.units >= TRIAL_UNITS && this.judgeTrial();
    if (this.trusts(linkBytesPerMs)) {
      const best = this.best(linkBytesPerMs, false);
      return best !== this.at && this.move(best);
    }
    const lived = this.est[this.at]!.achieved;
    if (lived === undefined) return false; // no baseline for a trial yet
    const best = this.best(linkBytesPerMs, true);
    if (best === this.at) return false;
    // The bar a trial must clear. What the level lived can be inflated by the first units,
    // which only filled buffers; the model's figure for it then is the fairer one.
    const baseline = Math.min(lived, this.goodput(this.level, linkBytesPerMs) ?? lived);
    this.trial = { from: this.at, baseline, units: 0 };
    return this.move(best);
  }

  /** The level the model prefers now (the current one if none qualifies), or the one below to try if this one has stayed put a while. */
  private best(linkBytesPerMs: number | undefined, explore: boolean): number {
    const here = this.goodput(this.level, linkBytesPerMs);
    if (here === undefined) return this.at;
    let best = this.at;
    let bestGoodput = here;
    for (let i = 0; i < LADDER.length; i++) {
      const g = this.goodput(LADDER[i]!, linkBytesPerMs);
      if (g === undefined || i === this.at || this.units < this.heldUntil[i]!) continue;
      const qualifies = i > this.at ? g > here * (1 + MARGIN_UP) : g >= here * (1 - MARGIN_DOWN);
      // The most goodput; between levels within MARGIN_DOWN of each other, the cheaper.
      if (qualifies && (g > bestGoodput * (1 + MARGIN_DOWN) || (g >= bestGoodput * (1 - MARGIN_DOWN) && i < best))) {
        best = i;
        bestGoodput = g;
      }
    }
    const below = this.at - 1;
    if (explore && best === this.at && below >= 0 && this.units - this.since >= this.holdFor[below]! && this.units >= this.heldUntil[below]!) best = below;
    return best;
  }

  /** A trial's end: kept if it lived up to the level it left; else undone, and that level held off for a while (twice as long each time). */
  private judgeTrial(): boolean {
    const { from, baseline } = this.trial!;
    this.trial = undefined;
    const lived = this.est[this.at]!.achieved ?? 0;
    if (lived >= baseline * (1 - MARGIN_DOWN)) {
      this.holdFor[this.at] = HOLD_UNITS;
      return false;
    }
    this.heldUntil[this.at] = this.units + this.holdFor[this.at]!;
    this.holdFor[this.at] = Math.min(MAX_HOLD_UNITS, this.holdFor[this.at]! * 2);
    return this.move(from);
  }

  private move(to: number): boolean {
    this.at = to;
    this.est[to] ??= { ratio: 1, nsPerByte: this.costNs(to), samples: 0 };
    this.est[to]!.achieved = undefined; // lived anew: what it did on other data says little
    this.since = this.units;
    return true;
  }

  private costNs(i: number): number {
    const e = this.est[i];
    return e && e.samples >= 1 ? e.nsPerByte : PRIOR_NS_PER_BYTE[LADDER[i]!]!;
  }
}
