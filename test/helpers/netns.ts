// Two "hosts" as network namespaces joined by a veth pair (10.<n>.0.1 and 10.<n>.0.2),
// with unique names (other namespaces may exist on the machine). Needs root.
import type { Subprocess } from "bun";
import { sh, watchStderr } from "./serve-process.ts";

export interface HostPair {
  a: { ns: string; ip: string };
  b: { ns: string; ip: string };
  /** argv prefix that runs a command inside a namespace. */
  exec(ns: string): string[];
  remove(): Promise<void>;
}

let made = 0;

export async function hostPair(): Promise<HostPair> {
  const id = `${process.pid % 10000}x${made++}`;
  const octet = 100 + ((process.pid + made) % 100);
  const a = { ns: `wmA${id}`, ip: `10.${octet}.0.1` };
  const b = { ns: `wmB${id}`, ip: `10.${octet}.0.2` };
  const va = `wva${id}`;
  const vb = `wvb${id}`;
  const run = (...argv: string[]) => sh(argv);
  await run("ip", "netns", "add", a.ns);
  await run("ip", "netns", "add", b.ns);
  const pair: HostPair = {
    a,
    b,
    exec: (ns) => ["ip", "netns", "exec", ns],
    async remove() {
      await sh(["ip", "netns", "del", a.ns], { allowFail: true });
      await sh(["ip", "netns", "del", b.ns], { allowFail: true });
    },
  };
  try {
    await run("ip", "link", "add", va, "type", "veth", "peer", "name", vb);
    await run("ip", "link", "set", va, "netns", a.ns);
    await run("ip", "link", "set", vb, "netns", b.ns);
    for (const [h, dev] of [[a, va], [b, vb]] as const) {
      await run("ip", "-n", h.ns, "addr", "add", `${h.ip}/24`, "dev", dev);
      await run("ip", "-n", h.ns, "link", "set", dev, "up");
      await run("ip", "-n", h.ns, "link", "set", "lo", "up");
    }
  } catch (err) {
    await pair.remove();
    throw err;
  }
  return pair;
}

/** A process inside a namespace, with its stdout collected and its stderr watched. `procs` collects it for cleanup. */
export function spawnInNs(ns: string, argv: string[], what: string, procs: Subprocess[]) {
  const proc = Bun.spawn(["ip", "netns", "exec", ns, ...argv], { stdin: "ignore", stdout: "pipe", stderr: "pipe" }) as Subprocess<"ignore", "pipe", "pipe">;
  procs.push(proc);
  let out = "";
  (async () => {
    for await (const c of proc.stdout) out += new TextDecoder().decode(c);
  })();
  return { proc, log: watchStderr(proc, what), out: () => out };
}

export async function waitUntil(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}

/**
 * The redirect's hosts around a real guest, three namespaces:
 *   C (clients) --veth-- A (tap0: the guest; forwards C's packets) --veth-- B (tap0)
 * Both taps carry the guest's gateway address, so the guest need not know it moved; C
 * reaches the guest through A (and, after the move, through A's tunnel to B). `wan` names
 * the A–B devices, for a caller that shapes that link.
 */
export interface GuestHosts {
  ns: { C: string; A: string; B: string };
  ip: { client: string; aLan: string; aWan: string; bWan: string; gw: string; guest: string };
  wan: { a: string; b: string };
  /** The guest's NIC as helpers/guest.ts startGuest takes it. */
  nic: { tap: string; gip: string; ggw: string };
  exec(ns: string): string[];
  remove(): Promise<void>;
}

let guestHostsMade = 0;

export async function guestHosts(prefix = "wg"): Promise<GuestHosts> {
  const id = `${process.pid % 10000}x${guestHostsMade++}`;
  const o = 30 + ((process.pid + guestHostsMade * 7) % 200);
  const ns = { C: `${prefix}C${id}`, A: `${prefix}A${id}`, B: `${prefix}B${id}` };
  const ip = { client: `10.${o}.1.2`, aLan: `10.${o}.1.1`, aWan: `10.${o}.2.1`, bWan: `10.${o}.2.2`, gw: `10.${o}.5.1`, guest: `10.${o}.5.10` };
  const wan = { a: `gw${id}a`, b: `gw${id}b` };
  const hosts: GuestHosts = {
    ns,
    ip,
    wan,
    nic: { tap: "tap0", gip: `${ip.guest}/24`, ggw: ip.gw },
    exec: (n) => ["ip", "netns", "exec", n],
    async remove() {
      for (const n of Object.values(ns)) await sh(["ip", "netns", "del", n], { allowFail: true });
    },
  };
  const ipIn = (n: string, ...argv: string[]) => sh(["ip", "-n", n, ...argv]);
  const veth = async (a: string, aDev: string, aCidr: string, b: string, bDev: string, bCidr: string) => {
    await sh(["ip", "link", "add", aDev, "netns", a, "mtu", "1600", "type", "veth", "peer", "name", bDev, "netns", b, "mtu", "1600"]);
    for (const [n, dev, cidr] of [[a, aDev, aCidr], [b, bDev, bCidr]] as const) {
      await ipIn(n, "addr", "add", cidr, "dev", dev);
      await ipIn(n, "link", "set", dev, "up");
    }
  };
  try {
    for (const n of Object.values(ns)) {
      await sh(["ip", "netns", "add", n]);
      await ipIn(n, "link", "set", "lo", "up");
    }
    await veth(ns.C, `gc${id}c`, `${ip.client}/24`, ns.A, `gc${id}a`, `${ip.aLan}/24`);
    await veth(ns.A, wan.a, `${ip.aWan}/24`, ns.B, wan.b, `${ip.bWan}/24`);
    await ipIn(ns.C, "route", "add", "default", "via", ip.aLan);
    for (const n of [ns.A, ns.B]) {
      await ipIn(n, "tuntap", "add", "dev", "tap0", "mode", "tap");
      await ipIn(n, "addr", "add", `${ip.gw}/24`, "dev", "tap0");
      await ipIn(n, "link", "set", "tap0", "up");
    }
    await sh(["ip", "netns", "exec", ns.A, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
  } catch (err) {
    await hosts.remove();
    throw err;
  }
  return hosts;
}

export interface Lan {
  hosts: Record<string, { ns: string; ip: string }>;
  exec(ns: string): string[];
  remove(): Promise<void>;
}

/** Hosts as network namespaces on one bridge (in a namespace of its own), 10.<n>.0.1, .2, … in the order named. */
export async function lan(names: string[]): Promise<Lan> {
  const id = `${process.pid % 10000}x${made++}`;
  const octet = 100 + ((process.pid + made * 7) % 100);
  const bridgeNs = `wmL${id}`;
  const hosts: Lan["hosts"] = {};
  names.forEach((n, i) => (hosts[n] = { ns: `wmH${i}x${id}`, ip: `10.${octet}.1.${i + 1}` }));
  const all = [bridgeNs, ...Object.values(hosts).map((h) => h.ns)];
  const net: Lan = {
    hosts,
    exec: (ns) => ["ip", "netns", "exec", ns],
    async remove() {
      for (const ns of all) await sh(["ip", "netns", "del", ns], { allowFail: true });
    },
  };
  try {
    await sh(["ip", "netns", "add", bridgeNs]);
    await sh(["ip", "-n", bridgeNs, "link", "add", "br0", "type", "bridge"]);
    await sh(["ip", "-n", bridgeNs, "link", "set", "br0", "up"]);
    let i = 0;
    for (const h of Object.values(hosts)) {
      const [inner, outer] = [`wli${id}x${i}`, `wlo${id}x${i++}`];
      await sh(["ip", "netns", "add", h.ns]);
      await sh(["ip", "link", "add", inner, "type", "veth", "peer", "name", outer]);
      await sh(["ip", "link", "set", inner, "netns", h.ns]);
      await sh(["ip", "link", "set", outer, "netns", bridgeNs]);
      await sh(["ip", "-n", bridgeNs, "link", "set", outer, "master", "br0", "up"]);
      await sh(["ip", "-n", h.ns, "addr", "add", `${h.ip}/24`, "dev", inner]);
      await sh(["ip", "-n", h.ns, "link", "set", inner, "up"]);
      await sh(["ip", "-n", h.ns, "link", "set", "lo", "up"]);
    }
  } catch (err) {
    await net.remove();
    throw err;
  }
  return net;
}
