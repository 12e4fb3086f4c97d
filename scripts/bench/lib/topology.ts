// The two hosts of a bench and how they are joined: two network namespaces and a veth
// pair between them. A scenario without a round trip runs over the veth, shaped by `tc
// tbf` at its rate on both ends (each direction) or not at all; one with a round trip (or
// loss) runs through the link emulator (lib/link.ts), whose devices carry addresses of
// their own, so TCP runs end to end over the delay. Also each row's two host directories,
// and the cleanup that removes it all.

import { $ } from "bun";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { describeSpec, EMU_DEV, EmulatedLink, type LinkCounts } from "./link.ts";
import { stopAll } from "./proc.ts";

/** The veth's addresses. */
export const SRC_IP = "10.77.0.1";
export const DST_IP = "10.77.0.2";
/** The link emulator's: each host's end of it. */
export const EMU_SRC_IP = "10.78.0.1";
export const EMU_DST_IP = "10.78.0.2";

export interface Scenario {
  name: string;
  rateSpec: string;
  /** Link rate, bits per second. */
  bps: number;
  rttMs: number;
  /** Probability a packet is lost, each way (0.001: 0.1 %); the link emulator's. */
  loss?: number;
}

const id = process.pid;
export const NS_SRC = `wmb-src-${id}`;
export const NS_DST = `wmb-dst-${id}`;
export const DEV_SRC = `wmbs${id}`.slice(0, 15);
export const DEV_DST = `wmbd${id}`.slice(0, 15);
let netUp = false;

export async function netSetup(): Promise<void> {
  netUp = true;
  await $`ip netns add ${NS_SRC}`;
  await $`ip netns add ${NS_DST}`;
  await $`ip link add ${DEV_SRC} netns ${NS_SRC} type veth peer name ${DEV_DST} netns ${NS_DST}`;
  await $`ip -n ${NS_SRC} addr add ${SRC_IP}/24 dev ${DEV_SRC}`;
  await $`ip -n ${NS_DST} addr add ${DST_IP}/24 dev ${DEV_DST}`;
  for (const [ns, dev] of [[NS_SRC, DEV_SRC], [NS_DST, DEV_DST]] as const) {
    await $`ip -n ${ns} link set lo up`;
    await $`ip -n ${ns} link set ${dev} up`;
  }
}

/** No qdisc on either veth end: the link is as fast as the CPUs move packets. */
export async function unshape(): Promise<string> {
  for (const [ns, dev] of [[NS_SRC, DEV_SRC], [NS_DST, DEV_DST]] as const) await $`tc -n ${ns} qdisc del dev ${dev} root`.nothrow().quiet();
  return "no shaping (the veth's own rate)";
}

/** tbf on both veth ends: each direction at `bps`. */
export function shape(bps: number): Promise<string> {
  return shapeEnds([[NS_SRC, DEV_SRC], [NS_DST, DEV_DST]], bps);
}

/** tbf on each end given (namespace, device), at `bps`. Burst ≥ 2 ms of line rate (16 KiB at least); queue ≤ 100 ms. */
export async function shapeEnds(ends: readonly (readonly [ns: string, dev: string])[], bps: number): Promise<string> {
  const burst = Math.max(16 * 1024, Math.round((bps / 8) * 0.002));
  const spec = ["rate", `${Math.round(bps)}bit`, "burst", `${burst}`, "latency", "100ms"];
  for (const [ns, dev] of ends) await $`tc -n ${ns} qdisc replace dev ${dev} root tbf ${spec}`;
  return `tbf ${spec.join(" ")}`;
}

/** The namespace's TCP buffer limits (the defaults: nothing here changes them), for the record. */
export async function tcpMem(ns = NS_SRC): Promise<string> {
  const get = async (k: string) => (await $`ip netns exec ${ns} sysctl -n net.ipv4.${k}`.text()).trim().replace(/\s+/g, " ");
  return `tcp_wmem ${await get("tcp_wmem")}, tcp_rmem ${await get("tcp_rmem")}`;
}

/** A scenario with a round trip or loss runs through the link emulator; the others over the veth (tbf at the rate, if any). */
export const emulated = (sc: Scenario): boolean => sc.rttMs > 0 || (sc.loss ?? 0) > 0;

/** The addresses the rows use on a scenario's path, and the source's device on it (its tx counter). */
export function pathOf(sc: Scenario): { src: string; dst: string; srcDev: string } {
  return emulated(sc) ? { src: EMU_SRC_IP, dst: EMU_DST_IP, srcDev: EMU_DEV } : { src: SRC_IP, dst: DST_IP, srcDev: DEV_SRC };
}

let link: EmulatedLink | undefined;

/**
 * A scenario's path up, replacing the last one's: the link emulator between the hosts (the
 * veth left unshaped: nothing of the rows' crosses it then), or the veth shaped by tbf at the
 * rate, or not at all. Returns what it set up, for the record.
 */
export async function linkUp(sc: Scenario, queueMs?: number): Promise<string> {
  await linkDown();
  if (!emulated(sc)) return sc.bps ? shape(sc.bps) : unshape();
  await unshape();
  const spec = { bps: sc.bps, rttMs: sc.rttMs, loss: sc.loss, queueMs, addrA: EMU_SRC_IP, addrB: EMU_DST_IP };
  link = await EmulatedLink.start(NS_SRC, NS_DST, spec);
  return describeSpec(spec);
}

/** Stops the link emulator, if one runs; its counts. */
export async function linkDown(): Promise<LinkCounts | undefined> {
  const l = link;
  link = undefined;
  return l?.stop();
}

/** Bytes the source has sent on the scenario's path (IP packets): its veth end's, or its emulator device's. */
export async function linkTxBytes(sc: Scenario): Promise<number> {
  const j = JSON.parse(await $`ip -n ${NS_SRC} -j -s link show dev ${pathOf(sc).srcDev}`.text());
  return Number(j[0].stats64.tx.bytes);
}

/** A row's two host directories, A holding a sparse copy of the bench's image. */
export async function rowHosts(dir: string, template: string): Promise<{ a: string; b: string; image: string }> {
  const a = join(dir, "A");
  const b = join(dir, "B");
  mkdirSync(a);
  mkdirSync(b);
  const image = join(a, "vm.img");
  await $`cp --sparse=always ${template} ${image}`;
  // The copy's dirty pages written back now, not during the row (loopback rows of 768 MiB
  // varied 1.7-3.6 s with the writeback of the last copy falling in them).
  await $`sync`;
  return { a, b, image };
}

let cleaned: Promise<void> | undefined;

/** Stops every process still running (the link emulator too) and removes the namespaces (once, however often called). */
export function cleanup(): Promise<void> {
  cleaned ??= (async () => {
    await linkDown().catch(() => undefined);
    await stopAll();
    if (netUp) {
      await $`ip netns del ${NS_SRC}`.nothrow().quiet();
      await $`ip netns del ${NS_DST}`.nothrow().quiet();
    }
  })();
  return cleaned;
}
