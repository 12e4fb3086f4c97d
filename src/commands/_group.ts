// `--group NAME`: a move waits for one of its group's slots on this host before it starts,
// and while it sends, its --bandwidth is the group's budget shared with the others sending
// (src/remote/move-group.ts, src/net/bandwidth-share.ts).

import type { Logger } from "../log.ts";
import { followShare } from "../net/bandwidth-share.ts";
import type { TokenBucket } from "../net/rate.ts";
import { MoveGroup, parseConcurrency, parseGroupName } from "../remote/move-group.ts";

type Say = (event: Record<string, unknown>, text: string) => void;

/** --group and --concurrency, read before anything else happens: a bad value is a usage error, not a late surprise. */
export function groupArgs(args: { group?: string; concurrency?: string }): { name: string; concurrency: number } | undefined {
  return args.group === undefined ? undefined : { name: parseGroupName(args.group), concurrency: parseConcurrency(args.concurrency ?? "2") };
}

/** Joins --group if given (waiting for a slot, and saying so); undefined without it. */
export async function joinMoveGroup(args: { group?: string; concurrency?: string; "run-dir": string }, say: Say): Promise<MoveGroup | undefined> {
  const wanted = groupArgs(args);
  if (!wanted) return undefined;
  const { name, concurrency } = wanted;
  const start = performance.now();
  let waited = false;
  const group = await MoveGroup.join(args["run-dir"], name, concurrency, () => {
    waited = true;
    say({ event: "waiting", group: name, concurrency, at: Date.now() }, `waiting: ${concurrency} move(s) of group ${name} already run on this host`);
  });
  if (waited) say({ event: "slot", group: name, slot: group.slot, waitedMs: Math.round(performance.now() - start), at: Date.now() }, `group ${name}: our turn after ${((performance.now() - start) / 1000).toFixed(1)} s`);
  return group;
}

/** Counts this move as sending, with the bucket held to its part of the budget, until the returned stop. */
export function sendInGroup(group: MoveGroup | undefined, rate: TokenBucket | undefined, log: Logger): () => void {
  if (!group) return () => {};
  group.sending(true);
  const budget = rate?.bytesPerSec;
  const share = rate && budget ? followShare(rate, budget, () => group.senders()) : undefined;
  if (share) log.info(`group ${group.name}: ${(budget! * 8 / 1e6).toFixed(1)} Mbit/s shared by the moves sending`);
  return () => {
    share?.stop();
    group.sending(false);
  };
}
