// Progress of a whole job of moves (an evacuation: the moves of one `--group` on a host),
// from what each move last said of itself: how many are done, under way, waiting or failed,
// the bytes left, and when it should end. The ETA is the bytes left over the rate the job
// sends at: the group's budget when it has one (it is the limit), else what the moves under
// way measured. Read again and again (`status --group --watch`), an ETA that goes up says
// why: bytes that were not there before (the VMs' writes, a move started again) or a slower
// rate. Pure: the files are read elsewhere (src/remote/group-progress.ts).

export type MoveState = "waiting" | "sending" | "done" | "failed" | "gone";

export interface MoveEntry {
  vm: string;
  state: MoveState;
  /** Bytes still to send: the image left to copy and the deltas queued (an estimate: holes go fast). */
  bytesLeft: number;
  /** Bytes/s the move was sending at lately (its link share), when known. */
  rate?: number;
  /** The group's budget, bytes/s (--bandwidth with --group), when given. */
  budget?: number;
  error?: string;
}

export interface JobSummary {
  done: number;
  underWay: number;
  waiting: number;
  failed: number;
  bytesLeft: number;
  /** Bytes/s the ETA assumes. */
  rate?: number;
  etaS?: number;
}

export function summarize(moves: readonly MoveEntry[]): JobSummary {
  const count = (s: MoveState) => moves.filter((m) => m.state === s).length;
  const live = moves.filter((m) => m.state === "sending" || m.state === "waiting");
  const bytesLeft = live.reduce((n, m) => n + m.bytesLeft, 0);
  const budget = Math.max(0, ...moves.map((m) => m.budget ?? 0)) || undefined;
  const measured = moves.filter((m) => m.state === "sending").reduce((n, m) => n + (m.rate ?? 0), 0) || undefined;
  const rate = budget ?? measured;
  return {
    done: count("done"),
    underWay: count("sending"),
    waiting: count("waiting"),
    failed: count("failed") + count("gone"),
    bytesLeft,
    rate,
    etaS: rate ? bytesLeft / rate : undefined,
  };
}

/** An ETA this much later than the one before, beyond the time that passed, is worth a reason. */
const ETA_SLACK_S = 1;

/** Why the ETA went up since the previous reading `elapsedS` ago; undefined when it did not. */
export function etaRise(prev: JobSummary, next: JobSummary, elapsedS: number): string | undefined {
  if (prev.etaS === undefined || next.etaS === undefined) return undefined;
  if (next.etaS <= prev.etaS - elapsedS + ETA_SLACK_S) return undefined;
  const reasons: string[] = [];
  if (next.bytesLeft > prev.bytesLeft) reasons.push(`${formatMiB(next.bytesLeft - prev.bytesLeft)} more to send (the VMs' writes, or a move started again)`);
  if (prev.rate && next.rate && next.rate < prev.rate) reasons.push(`the rate fell from ${mbit(prev.rate)} to ${mbit(next.rate)}`);
  if (!reasons.length) reasons.push("the bytes sent meanwhile were fewer than the rate promised");
  return `ETA up ${Math.round(next.etaS - (prev.etaS - elapsedS))} s: ${reasons.join("; ")}`;
}

export function renderSummary(group: string, s: JobSummary): string {
  const eta = s.etaS === undefined ? "ETA unknown (nothing sending yet)" : `ETA ${formatSeconds(s.etaS)} at ${mbit(s.rate!)}`;
  return `group ${group}: ${s.done} done, ${s.underWay} under way, ${s.waiting} waiting${s.failed ? `, ${s.failed} failed` : ""}; ${formatMiB(s.bytesLeft)} left; ${eta}`;
}

function formatMiB(n: number): string {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function mbit(bytesPerSec: number): string {
  return `${((bytesPerSec * 8) / 1e6).toFixed(1)} Mbit/s`;
}

function formatSeconds(s: number): string {
  return s < 120 ? `${Math.round(s)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}
