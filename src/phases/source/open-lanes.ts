// The source's further connections (--streams, src/net/lanes.ts): opened once the first one's
// READY names a session, side by side, each authenticated with keys (or a TLS session) of its
// own, and joined to the first as lanes. One that cannot join costs its share of the link, not
// the migration: the channel runs on those that did.

import type { Logger } from "../../log.ts";
import { type Channel, ChannelClosed } from "../../net/channel.ts";
import type { Ready } from "../../net/protocol.ts";
import { socketBufferMax, windowBound } from "../../net/stream-count.ts";
import { type Credentials, joinHandshake, type Offer } from "../init.ts";

/** A join that takes longer than this (after a few round trips) is given up; the others go on. */
const JOIN_TIMEOUT_MS = 10_000;
/** A connect that takes longer than this is given up and tried again (resume-policy.ts). */
export const CONNECT_TIMEOUT_MS = 10_000;

export interface LaneOptions {
  connect: () => Promise<Channel>;
  creds: Credentials;
  offer: Offer;
  log: Logger;
  rttMs: number;
}

/** Opens lanes 1..want-1 of `ch` (fewer if the destination agreed to fewer); returns the streams the channel runs over. */
export async function openLanes(ch: Channel, ready: Ready, want: number, o: LaneOptions): Promise<number> {
  const n = Math.min(want, ready.streams ?? 1);
  if (n < 2 || !ready.session) return 1;
  const session = ready.session;
  const joins = [];
  for (let lane = 1; lane < n; lane++) joins.push(joinLane(ch, lane, n, session, o));
  const failed = (await Promise.all(joins)).filter((e) => e !== undefined);
  if (failed.length) o.log.warn(`${failed.length} of ${n - 1} further streams did not join (${failed[0]}); going on with ${ch.streams}`);
  return ch.streams;
}

/** One lane: connected, authenticated, joined; the error's message if not. */
async function joinLane(ch: Channel, lane: number, lanes: number, session: string, o: LaneOptions): Promise<string | undefined> {
  const timeoutMs = JOIN_TIMEOUT_MS + 4 * o.rttMs;
  try {
    const other = await connectWithin(async () => {
      const c = await o.connect();
      try {
        await joinHandshake(c, o.creds, o.offer, { session, lane });
      } catch (err) {
        c.close();
        throw err;
      }
      return c;
    }, timeoutMs);
    if (ch.closed) {
      other.close();
      throw new Error("the first connection closed meanwhile");
    }
    ch.join(lane, other, lanes, true);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * A connection within `ms`, or a failure: a path that drops packets leaves a connect waiting
 * for the kernel's SYN retries (two minutes), which would hold a resume long after the link
 * came back. One that succeeds too late is closed.
 */
export async function connectWithin(connect: () => Promise<Channel>, ms: number): Promise<Channel> {
  let timer: Timer | undefined;
  let late = false;
  const connecting = connect().then((c) => {
    if (late) c.close();
    return c;
  });
  connecting.catch(() => undefined); // a failure after the timeout has no one to hear it
  const timedOut = new Promise<never>((_, reject) => (timer = setTimeout(() => ((late = true), reject(new ChannelClosed(`no connection within ${Math.round(ms / 1000)} s`))), ms)));
  try {
    return await Promise.race([connecting, timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The one stream's rate is judged over its recent backlogged time, at least this many round
 * trips of it (and GROWTH_MIN_MS): the meter's life-long average still carried slow start and
 * crossed the window-bound line only 2.5 s into the bulk at 1 Gbit/s, 100 ms, a third of a
 * 256 MiB move on one stream. Slow start only makes a reading low: a reading that falls
 * short is simply followed by the next.
 */
const GROWTH_ROUND_TRIPS = 4;
const GROWTH_MIN_MS = 300;

/**
 * --streams auto (src/net/stream-count.ts): the further connections open, once, when the bulk
 * copy has measured its one connection bound by its window. They join beside the sending,
 * which goes on meanwhile; the channel takes each lane as it joins.
 */
export class LaneGrowth {
  private started = false;
  private mark: { busyMs: number; busyBytes: number };

  constructor(
    private readonly ch: Channel,
    private readonly rttMs: number,
    private readonly open: () => Promise<void>,
  ) {
    this.mark = ch.drainTotals();
  }

  /** Called before each bulk chunk. */
  check(): void {
    if (this.started) return;
    const now = this.ch.drainTotals();
    const busyMs = now.busyMs - this.mark.busyMs;
    if (busyMs < Math.max(GROWTH_MIN_MS, GROWTH_ROUND_TRIPS * this.rttMs)) return;
    const bytesPerMs = (now.busyBytes - this.mark.busyBytes) / busyMs;
    this.mark = now;
    if (!windowBound({ bytesPerMs, rttMs: this.rttMs, ...socketBufferMax() })) return;
    this.started = true;
    void this.open().catch(() => undefined); // a lane that cannot join leaves the channel as it was
  }
}
