// The paper's "disruption time" (issue 17), defined once, the same way for every workload,
// mode and link: how long a client saw the service less responsive than it was before the
// migration began. From a client's operations (a web request, a post, a chunk of video):
//   - the baseline is what the client saw before `baselineUntil` (the migration's start):
//     the median latency of its successful operations, and the median gap between two
//     successive successful completions (how often, normally, something good happens);
//   - an operation is *normal* when it succeeded within max(slowFactor × baseline latency,
//     baseline latency + slowFloorMs); failed or slower ones are *degraded*;
//   - the disruption is the longest stretch between two successive normal completions, less
//     what a normal operation may take (the limit above) and the client's own pause between
//     operations (baseline gap less baseline latency): a stretch that long can happen with
//     the service as it was. Never below 0. The clock runs from the first operation's start
//     to the last one's end, so a client that never got a normal answer again counts until
//     it stopped.
// "Additional disruption" is then the disruption less the VM's downtime (the bench's).

export interface ClientOp {
  /** When the client sent it, and when it had the answer (or gave up), in ms on one clock. */
  start: number;
  end: number;
  ok: boolean;
}

export interface DisruptionOptions {
  /** Operations that ended before this form the baseline (the migration's start). */
  baselineUntil: number;
  /** Slower than this many times the baseline latency is degraded (default 4)… */
  slowFactor?: number;
  /** …and than the baseline latency plus this (ms, default 100): fast services jitter by more than 4×. */
  slowFloorMs?: number;
}

export interface Disruption {
  disruptionMs: number;
  /** The stretch it was measured over: the normal completions around it. */
  from: number;
  to: number;
  baselineLatencyMs: number;
  baselineGapMs: number;
  /** The longest stretch that is not disruption: the limit of a normal operation and the client's pause. */
  allowanceMs: number;
  /** Operations that succeeded too slowly, and that failed. */
  slowOps: number;
  failedOps: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function measureDisruption(ops: readonly ClientOp[], o: DisruptionOptions): Disruption {
  const base = ops.filter((op) => op.ok && op.end < o.baselineUntil).sort((a, b) => a.end - b.end);
  if (base.length < 2) throw new Error(`a baseline needs at least 2 successful operations before the migration; the client had ${base.length}`);
  const baselineLatencyMs = median(base.map((op) => op.end - op.start));
  const baselineGapMs = median(base.slice(1).map((op, i) => op.end - base[i]!.end));
  const limit = Math.max((o.slowFactor ?? 4) * baselineLatencyMs, baselineLatencyMs + (o.slowFloorMs ?? 100));
  let slowOps = 0;
  let failedOps = 0;
  const normal: number[] = [];
  for (const op of ops) {
    if (!op.ok) failedOps++;
    else if (op.end - op.start > limit) slowOps++;
    else normal.push(op.end);
  }
  normal.sort((a, b) => a - b);
  const first = Math.min(...ops.map((op) => op.start));
  const last = Math.max(...ops.map((op) => op.end));
  const marks = [first, ...normal, last];
  let from = first;
  let to = first;
  for (let i = 1; i < marks.length; i++) {
    if (marks[i]! - marks[i - 1]! > to - from) {
      from = marks[i - 1]!;
      to = marks[i]!;
    }
  }
  const allowanceMs = limit + Math.max(0, baselineGapMs - baselineLatencyMs);
  return { disruptionMs: Math.max(0, to - from - allowanceMs), from, to, baselineLatencyMs, baselineGapMs, allowanceMs, slowOps, failedOps };
}
