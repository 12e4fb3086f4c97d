// The migrate bench's scenarios: each a path between the two hosts (rate, round trip,
// loss), the kind of image it moves, and the target its default wanmig row (sealed, the
// row `live-coalesce`) is held to (issue 32). Every scenario with a round trip runs through
// the link emulator (lib/topology.ts); loopback is the bare veth.

import { parseRate } from "../../src/net/rate.ts";
import type { ImageKind } from "./lib/images.ts";
import type { Scenario } from "./lib/topology.ts";

export interface Target {
  /** The row's throughput (the image's data over its migration time) at least this share of the link's rate. */
  minLinkShare?: number;
  /** ...and at least the fastest migration peer's (nbdcopy, QEMU's mirror). */
  beatPeers?: boolean;
  /** Migration time at most this many times the zstd -19 limit (a slow link: the data's zstd -19 size over the rate). */
  maxZstdLimit?: number;
  /** Migration time at most this many times the fastest peer's (loopback: no physical limit). */
  maxPeerTime?: number;
}

export interface MigrateScenario extends Scenario {
  imageKind: ImageKind;
  target: Target;
  /** What the target stands for, in the table's heading. */
  about: string;
}

interface Default {
  rate: string;
  rttMs: number;
  loss: number;
  imageKind: ImageKind;
  target: Target;
  about: string;
}

/** The scenarios with a link, their flags' defaults (`--NAME-rate`, `--NAME-rtt-ms`, `--NAME-loss`). */
const DEFAULTS: Record<string, Default> = {
  lan: { rate: "100mbit", rttMs: 50, loss: 0, imageKind: "random", target: { minLinkShare: 0.95 }, about: "a LAN between sites" },
  lfn: { rate: "1gbit", rttMs: 100, loss: 0, imageKind: "random", target: { minLinkShare: 0.8, beatPeers: true }, about: "a long fat network: one TCP stream's window, not the rate, bounds it" },
  lfn20: { rate: "1gbit", rttMs: 20, loss: 0, imageKind: "random", target: { minLinkShare: 0.9 }, about: "a fat network, shorter" },
  lfnloss: { rate: "1gbit", rttMs: 100, loss: 0.001, imageKind: "random", target: { minLinkShare: 0.6 }, about: "a long fat network losing 0.1 % of its packets at random" },
  wan: { rate: "5mbit", rttMs: 100, loss: 0, imageKind: "os", target: { maxZstdLimit: 1.1 }, about: "the paper's WAN: compression is the bound" },
};

export const SCENARIO_NAMES = ["loopback", ...Object.keys(DEFAULTS)];

/** parseArgs options for every scenario's flags. */
export function scenarioOptions(): Record<string, { type: "string"; default: string }> {
  const o: Record<string, { type: "string"; default: string }> = {};
  for (const [name, d] of Object.entries(DEFAULTS)) {
    o[`${name}-rate`] = { type: "string", default: d.rate };
    o[`${name}-rtt-ms`] = { type: "string", default: String(d.rttMs) };
    o[`${name}-loss`] = { type: "string", default: String(d.loss) };
  }
  return o;
}

/** The scenario `name` as the flags define it; `imageKind` overrides its own kind. */
export function scenario(name: string, values: Record<string, unknown>, imageKind?: ImageKind): MigrateScenario {
  if (name === "loopback")
    // The veth without tbf or emulator: whatever the CPUs can move (bps 0: no physical limit).
    return { name, rateSpec: "uncapped", bps: 0, rttMs: 0, imageKind: imageKind ?? "mixed", target: { maxPeerTime: 1 }, about: "no link: the CPUs are the bound" };
  const d = DEFAULTS[name];
  if (!d) throw new Error(`unknown scenario ${name}; use ${SCENARIO_NAMES.join(", ")}`);
  const rateSpec = String(values[`${name}-rate`]);
  const loss = Number(values[`${name}-loss`]);
  if (!(loss >= 0 && loss < 1)) throw new Error(`--${name}-loss ${values[`${name}-loss`]}: a probability, 0 to 1 (0.001 is 0.1 %)`);
  return { name, rateSpec, bps: parseRate(rateSpec) * 8, rttMs: Number(values[`${name}-rtt-ms`]), loss, imageKind: imageKind ?? d.imageKind, target: d.target, about: d.about };
}
