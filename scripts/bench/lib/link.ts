// A bench's delayed link: lib/link-emulator.ts run as a process of the bench between two
// hosts' namespaces, so TCP runs end to end over the round trip, rate, loss and queue asked
// for (a TCP proxy would end TCP at each side and hide its window limits). Started once the
// namespaces exist, stopped before they go; stopAll (lib/proc.ts) stops it on an interrupt.

import { join } from "node:path";
import { BUN } from "./constants.ts";
import { Proc, tail } from "./proc.ts";

const EMULATOR = join(import.meta.dir, "link-emulator.ts");

export interface EmulatorSpec {
  /** Rate, bits per second. */
  bps: number;
  rttMs: number;
  /** Probability a packet is lost, each way (0.001: 0.1 %). */
  loss?: number;
  /** The bottleneck's queue, in ms at the rate (the emulator's default: 200). */
  queueMs?: number;
  /** The address of each end's device: A's and B's. */
  addrA: string;
  addrB: string;
}

interface DirectionCounts {
  forwarded: number;
  bytes: number;
  lost: number;
  dropped: number;
}

/** What the emulator did, A to B and back (printed as it stops). */
export interface LinkCounts {
  aToB: DirectionCounts;
  bToA: DirectionCounts;
}

/** The device the emulator names at each end. */
export const EMU_DEV = "lfn0";

/**
 * Large packets keep the emulator's packet rate near 2,000 a second each way, what one
 * thread of it moves with ease; small enough that one packet's time at the rate (0.5 ms or
 * less) adds little to the round trip. Never below 1,600: room for a VXLAN-wrapped
 * 1,500-byte frame (the paper bench's tunnel runs over it).
 */
export function mtuFor(bps: number): number {
  return Math.min(65_000, Math.max(1_600, Math.round(bps / 8 / 2_000)));
}

export function describeSpec(s: EmulatorSpec): string {
  const rate = s.bps >= 1e9 ? `${s.bps / 1e9} Gbit/s` : `${s.bps / 1e6} Mbit/s`;
  return `link emulator: ${rate}, RTT ${s.rttMs} ms, loss ${((s.loss ?? 0) * 100).toFixed(2)} %, queue ${s.queueMs ?? 200} ms, MTU ${mtuFor(s.bps)}`;
}

export class EmulatedLink {
  private constructor(
    private readonly proc: Proc,
    readonly spec: EmulatorSpec,
  ) {}

  /** The link between `nsA` and `nsB`, up once the emulator says "ready" (it is stopped if it does not). */
  static async start(nsA: string, nsB: string, spec: EmulatorSpec): Promise<EmulatedLink> {
    const args = ["--rtt-ms", String(spec.rttMs), "--rate-mbit", String(spec.bps / 1e6), "--loss", String(spec.loss ?? 0), "--mtu", String(mtuFor(spec.bps)), "--addr-a", spec.addrA, "--addr-b", spec.addrB, "--dev", EMU_DEV];
    if (spec.queueMs !== undefined) args.push("--queue-ms", String(spec.queueMs));
    // In the bench's own namespace: it makes its TUN devices there and moves them into the hosts'.
    const proc = new Proc("link-emulator", "", [BUN, EMULATOR, nsA, nsB, ...args], false);
    const link = new EmulatedLink(proc, spec);
    const end = Date.now() + 15_000;
    while (!proc.stdoutLines.some((l) => l.line.trim() === "ready")) {
      if (proc.proc.exitCode !== null || Date.now() > end) {
        await proc.stop();
        throw new Error(`the link emulator did not come up (exit ${proc.proc.exitCode}):\n${tail(proc.stderr)}`);
      }
      await Bun.sleep(50);
    }
    return link;
  }

  /** Stops it (its devices go with it); its counts, if it printed them. */
  async stop(): Promise<LinkCounts | undefined> {
    await this.proc.stop();
    for (let i = 0; i < 20; i++) {
      const line = this.proc.stdoutLines.findLast((l) => l.line.startsWith("{"));
      if (line) return JSON.parse(line.line) as LinkCounts;
      await Bun.sleep(50); // the last line may still be on its way through the pipe
    }
    return undefined;
  }
}
