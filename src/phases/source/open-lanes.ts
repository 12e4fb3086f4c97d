// The source's further connections (--streams, src/net/lanes.ts): opened once the first one's
// READY names a session, side by side, each authenticated with keys (or a TLS session) of its
// own, and joined to the first as lanes. One that cannot join costs its share of the link, not
// the migration: the channel runs on those that did.

import type { Logger } from "../../log.ts";
import type { Channel } from "../../net/channel.ts";
import type { Ready } from "../../net/protocol.ts";
import { type Credentials, joinHandshake, type Offer } from "../init.ts";

/** A join that takes longer than this (after a few round trips) is given up; the others go on. */
const JOIN_TIMEOUT_MS = 10_000;

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
  let other: Channel | undefined;
  const timeoutMs = JOIN_TIMEOUT_MS + 4 * o.rttMs;
  let timer: Timer | undefined;
  try {
    const joined = (async () => {
      other = await o.connect();
      await joinHandshake(other, o.creds, o.offer, { session, lane });
      return other;
    })();
    const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer in ${Math.round(timeoutMs / 1000)} s`)), timeoutMs)));
    const joinedLane = await Promise.race([joined, late]);
    if (ch.closed) throw new Error("the first connection closed meanwhile");
    ch.join(lane, joinedLane, lanes, true);
    return undefined;
  } catch (err) {
    other?.close();
    return (err as Error).message;
  } finally {
    clearTimeout(timer);
  }
}
