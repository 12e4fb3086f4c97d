// What a source migration is asked to do, and what it gives back.

import type { Channel } from "../../net/channel.ts";
import type { StreamsSetting } from "../../net/stream-count.ts";
import type { CompressSetting } from "../../net/compress.ts";
import type { ThrottleParams } from "../../disk/throttle/throttle-policy.ts";
import type { SourceHypervisor } from "../../hypervisor/types.ts";
import type { Redirect } from "../../redirect/redirect.ts";
import type { Logger } from "../../log.ts";
import type { Credentials } from "../init.ts";
import type { RedirectOptions } from "../redirect.ts";
import type { RecoveryOptions } from "../recover.ts";
import type { MigrationMetrics } from "./metrics.ts";

export interface SourceOptions {
  name: string;
  runDir: string;
  connect: () => Promise<Channel>;
  creds: Credentials;
  /** --streams: connections to the destination as one channel (src/net/lanes.ts); 1 over SSH. Default 1. */
  streams?: StreamsSetting;
  blockSize?: number;
  compress: CompressSetting;
  /** live (the paper's) or freeze-and-copy (the baseline it is compared with). */
  mode?: "live" | "freeze-and-copy";
  /** paper: send every delta; coalesce: drop those the bulk copy carries or a later one covers. */
  deltas?: "paper" | "coalesce";
  /** Tunnel the VM's old address and update DNS (phase 5), if given. */
  redirect?: RedirectOptions;
  /** Polled at every step before the point of no return: true once the operator asked to stop (Ctrl-C). */
  interrupted?: () => boolean;
  /** Who moves the memory (default: none, storage only). */
  hypervisor?: SourceHypervisor;
  /** Where the destination is (the record of the move at the source names it). */
  to?: string;
  /**
   * --throttle-threshold / --throttle-delay: the paper's queue-length throttle, set on the
   * serve before recording starts. Without them the convergence controller throttles.
   */
  throttle?: Partial<ThrottleParams>;
  /** --max-downtime (ms): the budget for the hand-off's work; one round trip comes on top. Default 50. */
  maxDowntimeMs?: number;
  /** --timeout and --timeout-action: from the start of the migration. */
  timeout?: { ms: number; action: "abort" | "freeze"; text: string };
  /** --max-log-size (bytes): the delta log's bound, if less than its share of free space. */
  maxLogBytes?: number;
  log: Logger;
  onEvent?: (e: Record<string, unknown>) => void;
}

/** The metrics, and the network redirect still up (the caller waits for it to go idle). */
export interface SourceResult {
  metrics: MigrationMetrics;
  redirect?: Redirect;
}

/** --max-downtime's default, as QEMU's downtime-limit is 300 ms and virsh's is settable: our hand-off is small. */
export const DEFAULT_MAX_DOWNTIME_MS = 50;

/** How long the source waits for a serve that went away (a restart) before it gives up. */
export const SERVE_RESTART_GRACE_MS = 30_000;

/** Settling a hand-off broken by the link (recover.ts): attempts to reach the destination, and the pause before each (ms). */
export const RESUME_BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];

export function blockSize(o: SourceOptions): number {
  return o.blockSize ?? 64 * 1024;
}

export function phaseEvent(o: SourceOptions, phase: string): void {
  o.onEvent?.({ event: "phase", phase, at: Date.now() });
}

export function recoveryOptions(o: SourceOptions, hv: SourceHypervisor, bs: number): RecoveryOptions {
  return { name: o.name, connect: o.connect, creds: o.creds, compress: o.compress, blockSize: bs, hypervisor: hv, log: o.log, to: o.to ?? "the destination", backoffMs: RESUME_BACKOFF_MS };
}

/** The redirect's events (tunnel up, DNS updated, idle) go out as the migration's. */
export function redirectEvents(o: SourceOptions): (e: Record<string, unknown>) => void {
  return (e) => o.onEvent?.(e);
}
