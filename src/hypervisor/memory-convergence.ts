// When QEMU's pre-copy of memory cannot finish. QEMU stops the VM for the last pass only
// once what is left fits its downtime limit (300 ms by default) at the rate it measures. A
// guest that dirties memory faster than the link carries it never gets there: on the
// paper's WAN (5 Mbit/s, ~600 KB/s) the paper bench's web server (busybox httpd, a fork per
// request) dirtied more than that, and its migration was still copying memory after 10
// minutes. Xen, the paper's hypervisor, ends pre-copy after a fixed number of rounds and
// copies the rest with the VM stopped: the paper's 68 s of WAN disruption is that last
// copy. We do the same with QEMU: once pre-copy has had its rounds and still does not fit,
// the downtime limit is raised to what sending the rest takes, so QEMU stops the VM now.
// (QEMU's auto-converge, which slows the vCPUs instead, is not used: see qemu.ts.)

/** What QEMU's query-migrate says of the pre-copy (its "ram" member). */
export interface PrecopyProgress {
  /** Completed passes over memory (QEMU's dirty-sync-count). */
  rounds: number;
  /** Bytes still to send. */
  remainingBytes: number;
  /** QEMU's measured transfer rate, bytes per ms. */
  bytesPerMs: number;
  /** QEMU's downtime limit now, ms. */
  downtimeLimitMs: number;
}

/** Pre-copy's rounds before it is ended (Xen's default is 30; fewer here: on a WAN a round of a busy guest costs tens of seconds). */
export const MAX_PRECOPY_ROUNDS = 5;
/** The raised limit covers the rest at the measured rate with this margin: the rate is an estimate. */
const MARGIN = 1.5;
/** QEMU refuses a downtime limit above 2000 s. */
const QEMU_MAX_DOWNTIME_MS = 2_000_000;

/**
 * The downtime limit that ends pre-copy now, or undefined while pre-copy may go on: before
 * its rounds are spent, or when what is left already fits the limit (QEMU will stop by itself).
 */
export function endPrecopyLimit(p: PrecopyProgress, maxRounds = MAX_PRECOPY_ROUNDS): number | undefined {
  if (p.rounds < maxRounds || p.bytesPerMs <= 0) return undefined;
  const needMs = (p.remainingBytes / p.bytesPerMs) * MARGIN;
  if (needMs <= p.downtimeLimitMs) return undefined;
  return Math.min(QEMU_MAX_DOWNTIME_MS, Math.ceil(needMs));
}

/** PrecopyProgress from QEMU's query-migrate answer (undefined before its "ram" member appears). */
export function precopyProgress(info: { ram?: { "dirty-sync-count"?: number; remaining?: number; mbps?: number } }, downtimeLimitMs: number): PrecopyProgress | undefined {
  const ram = info.ram;
  if (!ram || ram["dirty-sync-count"] === undefined || ram.remaining === undefined || ram.mbps === undefined) return undefined;
  return { rounds: ram["dirty-sync-count"], remainingBytes: ram.remaining, bytesPerMs: (ram.mbps * 1e6) / 8 / 1000, downtimeLimitMs };
}
