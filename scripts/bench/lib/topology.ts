// The two hosts of a bench and how they are joined: two network namespaces and a veth
// pair between them, the link shaped by `tc tbf` at the rate on both ends (each
// direction), and latency from the user-space delay proxy (lib/delay-proxy.ts; this
// machine has no netem), with the source namespace's TCP buffers capped to suit it.
// Also each row's two host directories, and the cleanup that removes it all.

import { $ } from "bun";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { BUN } from "./constants.ts";
import { stopAll } from "./proc.ts";

export const SRC_IP = "10.77.0.1";
export const DST_IP = "10.77.0.2";

export interface Scenario {
  name: string;
  rateSpec: string;
  /** Link rate, bits per second. */
  bps: number;
  rttMs: number;
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

let defaultTcpMem: { wmem: string; rmem: string } | undefined;

/**
 * With the delay proxy, the source's stream crosses loopback to the proxy first, where
 * TCP would autotune its buffers to several MiB (tcp_wmem up to 4 MiB, tcp_rmem up to
 * 32 MiB here): a queue no real 100 ms path builds, and one the hand-off has to drain. So
 * in the source's namespace the buffers are capped near what a WAN path's TCP would use:
 * 2 × rate × (RTT + tbf's 100 ms queue), 256 KiB at least. Without the proxy: the defaults.
 */
export async function tuneTcpBuffers(sc: Scenario): Promise<string> {
  const get = async (k: string) => (await $`ip netns exec ${NS_SRC} sysctl -n net.ipv4.${k}`.text()).trim().replace(/\s+/g, " ");
  defaultTcpMem ??= { wmem: await get("tcp_wmem"), rmem: await get("tcp_rmem") };
  let wmem = defaultTcpMem.wmem;
  let rmem = defaultTcpMem.rmem;
  if (sc.rttMs > 0) ({ wmem, rmem } = proxiedTcpMem(sc));
  await setTcpMem(NS_SRC, wmem, rmem);
  return `tcp_wmem ${wmem}, tcp_rmem ${rmem}`;
}

/** tcp_wmem and tcp_rmem for a sender behind the delay proxy (see tuneTcpBuffers). */
export function proxiedTcpMem(sc: Scenario): { wmem: string; rmem: string } {
  const max = Math.max(256 * 1024, Math.ceil(2 * (sc.bps / 8) * ((sc.rttMs + 100) / 1000)));
  return { wmem: `4096 16384 ${max}`, rmem: `4096 ${Math.min(131072, max)} ${max}` };
}

export async function setTcpMem(ns: string, wmem: string, rmem: string): Promise<void> {
  await $`ip netns exec ${ns} sysctl -q -w ${`net.ipv4.tcp_wmem=${wmem}`} ${`net.ipv4.tcp_rmem=${rmem}`}`;
}

/** Bytes the source's veth end has sent (IP packets). */
export async function linkTxBytes(): Promise<number> {
  const j = JSON.parse(await $`ip -n ${NS_SRC} -j -s link show dev ${DEV_SRC}`.text());
  return Number(j[0].stats64.tx.bytes);
}

/** The delay proxy, run as its own process (`bun lib/delay-proxy.ts`) wherever a row needs latency. */
const PROXY = join(import.meta.dir, "delay-proxy.ts");

export function proxyArgs(sc: Scenario, listen: string, to: string): string[] {
  // The relay must hold rate × one-way delay, or it caps the rate: twice that, 64 KiB at least.
  const kib = Math.max(64, Math.ceil(((sc.bps / 8) * (sc.rttMs / 2 / 1000) * 2) / 1024));
  return [BUN, PROXY, "--listen", listen, "--to", to, "--delay-ms", String(sc.rttMs / 2), "--max-buffer-kib", String(kib)];
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

/** Stops every process still running and removes the namespaces (once, however often called). */
export function cleanup(): Promise<void> {
  cleaned ??= (async () => {
    await stopAll();
    if (netUp) {
      await $`ip netns del ${NS_SRC}`.nothrow().quiet();
      await $`ip netns del ${NS_DST}`.nothrow().quiet();
    }
  })();
  return cleaned;
}
