// `--group NAME`: a move waits for one of its group's slots on this host before it starts,
// and while it sends, its --bandwidth is the group's budget shared with the others sending
// (src/remote/move-group.ts, src/net/bandwidth-share.ts).

import { statSync } from "node:fs";
import { ControlClient } from "../disk/service/control-client.ts";
import { controlSocketPath, servedImages } from "../disk/service/status.ts";
import type { Logger } from "../log.ts";
import { followShare } from "../net/bandwidth-share.ts";
import { parseRate, type TokenBucket } from "../net/rate.ts";
import { MoveProgress } from "../remote/group-progress.ts";
import { MoveGroup, parseConcurrency, parseGroupName } from "../remote/move-group.ts";

/** A move in its group: its slot, and the file where it says how far it is. */
export interface GroupMove {
  group: MoveGroup;
  progress: MoveProgress;
}

type Say = (event: Record<string, unknown>, text: string) => void;

/** --group and --concurrency, read before anything else happens: a bad value is a usage error, not a late surprise. */
export function groupArgs(args: { group?: string; concurrency?: string }): { name: string; concurrency: number } | undefined {
  return args.group === undefined ? undefined : { name: parseGroupName(args.group), concurrency: parseConcurrency(args.concurrency ?? "2") };
}

/** Joins --group if given (waiting for a slot, and saying so); undefined without it. */
export async function joinMoveGroup(args: { group?: string; concurrency?: string; bandwidth?: string; name: string; "run-dir": string }, say: Say): Promise<GroupMove | undefined> {
  const wanted = groupArgs(args);
  if (!wanted) return undefined;
  const { name, concurrency } = wanted;
  const progress = new MoveProgress(args["run-dir"], name, args.name, await allocatedBytes(args["run-dir"], args.name), args.bandwidth ? parseRate(args.bandwidth, "--bandwidth") : undefined);
  const start = performance.now();
  let waited = false;
  const group = await MoveGroup.join(args["run-dir"], name, concurrency, () => {
    waited = true;
    progress.waiting();
    say({ event: "waiting", group: name, concurrency, at: Date.now() }, `waiting: ${concurrency} move(s) of group ${name} already run on this host`);
  });
  progress.started();
  if (waited) say({ event: "slot", group: name, slot: group.slot, waitedMs: Math.round(performance.now() - start), at: Date.now() }, `group ${name}: our turn after ${((performance.now() - start) / 1000).toFixed(1)} s`);
  return { group, progress };
}

/** The VM's images' allocated bytes: the most its move sends (0 when its serve cannot be asked; the move then fails on its own). */
async function allocatedBytes(runDir: string, name: string): Promise<number> {
  try {
    const status = await new ControlClient(controlSocketPath(runDir, name)).status();
    return servedImages(status).reduce((n, image) => n + statSync(image).blocks * 512, 0);
  } catch {
    return 0;
  }
}

/** Counts this move as sending, with the bucket held to its part of the budget, until the returned stop. */
export function sendInGroup(move: GroupMove | undefined, rate: TokenBucket | undefined, log: Logger): () => void {
  if (!move) return () => {};
  const { group } = move;
  group.sending(true);
  const budget = rate?.bytesPerSec;
  const share = rate && budget ? followShare(rate, budget, () => group.senders()) : undefined;
  if (share) log.info(`group ${group.name}: ${(budget! * 8 / 1e6).toFixed(1)} Mbit/s shared by the moves sending`);
  return () => {
    share?.stop();
    group.sending(false);
  };
}
