// Evacuation benchmark (issue 34): N VMs leave one host at once, at concurrency 1, 2 and 4,
// under one bandwidth budget, with the peer in the same run. Every source is started at the
// same moment with `--group` (the host-wide slots and the shared budget an evacuation uses),
// as Ansible starts them.
//
//   npm run bench -- evacuate [--vms 8] [--data-mib 256] [--budget 200mbit] [--concurrency 1,2,4] [--no-peer] [--json FILE]
//   npm run bench -- evacuate --quick        (4 VMs of 64 MiB at concurrency 2: under a minute)
//
// Host A and host B are network namespaces joined by a veth shaped to the budget by tc tbf
// (the migrate bench's topology): the budget is the link, and wanmig's `--bandwidth` with
// `--group` is set to it as well. The peer copies the same disks over the same link: nbdcopy
// at B pulling from qemu-nbd at A, C copies at a time, the kernel sharing the link among
// them; it is a plain copy (the VMs stopped), so its time is the floor a live move is judged by.
// Per concurrency: the total time against the sum of the data over the budget (target
// ≤ 1.15 ×), the worst VM's storage downtime against one VM moved alone (target ≤ its figure
// + 20 ms), and the source host's peak memory (serves and sources together) and CPU. The data
// is random, so nothing compresses and the bytes on the wire are the data. Every destination
// is compared with its source (cmp).

import { $ } from "bun";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ControlClient } from "../../src/disk/service/control-client.ts";
import { parseRate } from "../../src/net/rate.ts";
import { BUN, MAIN, MiB } from "./lib/constants.ts";
import { identical } from "./lib/images.ts";
import { Proc, tail } from "./lib/proc.ts";
import { cleanup, DST_IP, netSetup, NS_DST, NS_SRC, shape, SRC_IP } from "./lib/topology.ts";
import { waitUntil } from "./lib/wait.ts";

interface Level {
  vms: number;
  concurrency: number;
  totalS: number;
  ideal: number;
  ratio: number;
  worstDowntimeMs: number;
  downtimesMs: number[];
  peakRssMiB: number;
  cpuS: number;
  identical: boolean;
}

const opts = {
  vms: { type: "string", default: "8" },
  "data-mib": { type: "string", default: "256" },
  budget: { type: "string", default: "200mbit" },
  concurrency: { type: "string", default: "1,2,4" },
  quick: { type: "boolean", default: false },
  "no-peer": { type: "boolean", default: false },
  json: { type: "string" },
} as const;

let port = 17600 + (process.pid % 1000) * 10;

function rssKiB(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** N serves at A, N dests at B; every source started at once in one group; the figures. */
async function level(root: string, template: string, vms: number, concurrency: number, budget: string, dataBytes: number): Promise<Level> {
  const a = join(root, `A-c${concurrency}-n${vms}`);
  const b = join(root, `B-c${concurrency}-n${vms}`);
  mkdirSync(a, { recursive: true });
  mkdirSync(b, { recursive: true });
  const names = Array.from({ length: vms }, (_, i) => `vm${i + 1}`);
  const hostA: Proc[] = [];
  const others: Proc[] = [];
  try {
    for (const n of names) {
      await $`cp ${template} ${join(a, `${n}.img`)}`;
      hostA.push(new Proc(`serve ${n}`, NS_SRC, [BUN, MAIN, "serve", "--name", n, "--image", join(a, `${n}.img`), "--run-dir", a, "--log", "warn"], true));
      await waitUntil(async () => (await new ControlClient(join(a, `${n}.ctl`)).status()).size > 0, `serve ${n}`);
    }
    const to: Record<string, string> = {};
    for (const n of names) {
      to[n] = `${DST_IP}:${port++}`;
      const d = new Proc(`dest ${n}`, NS_DST, [BUN, MAIN, "dest", "--name", n, "--image", join(b, `${n}.img`), "--run-dir", b, "--listen", to[n]!, "--insecure", "--log", "info"], false);
      others.push(d);
      await d.waitFor(/listening on \S+:\d+/, `dest ${n} to listen`);
    }
    let peakKiB = 0;
    const t0 = performance.now();
    const sources = names.map((n) => new Proc(`source ${n}`, NS_SRC, [BUN, MAIN, "source", "--name", n, "--run-dir", a, "--to", to[n]!, "--insecure", "--group", "evacuate", "--concurrency", String(concurrency), "--bandwidth", budget, "--json", "--log", "warn"], true));
    hostA.push(...sources);
    const sampler = setInterval(() => (peakKiB = Math.max(peakKiB, hostA.reduce((s, p) => s + rssKiB(p.proc.pid), 0))), 100);
    const codes = await Promise.all(sources.map((s) => s.proc.exited));
    const totalS = (performance.now() - t0) / 1000;
    clearInterval(sampler);
    for (const p of hostA) p.poll();
    codes.forEach((c, i) => {
      if (c !== 0) throw new Error(`source ${names[i]} exited ${c}:\n${tail(sources[i]!.stderr)}`);
    });
    const downtimesMs = sources.map((s) => JSON.parse(s.stdoutLines.findLast((l) => l.line.includes('"event":"done"'))!.line).storageDowntimeMs as number);
    let same = true;
    for (const n of names) same &&= await identical(join(a, `${n}.img`), join(b, `${n}.img`));
    const ideal = (vms * dataBytes) / parseRate(budget);
    return {
      vms,
      concurrency,
      totalS,
      ideal,
      ratio: totalS / ideal,
      worstDowntimeMs: Math.max(...downtimesMs),
      downtimesMs,
      peakRssMiB: peakKiB / 1024,
      cpuS: hostA.reduce((s, p) => s + p.peak.cpuS, 0),
      identical: same,
    };
  } finally {
    for (const p of [...hostA, ...others]) await p.stop();
    rmSync(a, { recursive: true, force: true });
    rmSync(b, { recursive: true, force: true });
  }
}

/** The peer: each disk copied by nbdcopy at B from qemu-nbd at A (read-only), C at a time, the kernel sharing the link. Total seconds, and whether every copy is identical. */
async function peerLevel(root: string, template: string, vms: number, concurrency: number): Promise<{ totalS: number; identical: boolean }> {
  const a = join(root, `peerA-c${concurrency}`);
  const b = join(root, `peerB-c${concurrency}`);
  mkdirSync(a, { recursive: true });
  mkdirSync(b, { recursive: true });
  const names = Array.from({ length: vms }, (_, i) => `vm${i + 1}`);
  const servers: Proc[] = [];
  try {
    const uri: Record<string, string> = {};
    for (const n of names) {
      await $`cp ${template} ${join(a, `${n}.img`)}`;
      const p = port++;
      uri[n] = `nbd://${SRC_IP}:${p}`;
      servers.push(new Proc(`qemu-nbd ${n}`, NS_SRC, ["qemu-nbd", "-f", "raw", "-r", "-t", "-e", "16", "-b", SRC_IP, "-p", String(p), join(a, `${n}.img`)], false));
      await waitUntil(async () => (await $`ip netns exec ${NS_SRC} nbdinfo --size ${uri[n]}`.nothrow().quiet()).exitCode === 0, `qemu-nbd ${n}`);
    }
    const queue = [...names];
    const t0 = performance.now();
    const worker = async () => {
      for (let n = queue.shift(); n; n = queue.shift()) {
        const copy = new Proc(`nbdcopy ${n}`, NS_DST, ["nbdcopy", "--flush", uri[n]!, join(b, `${n}.img`)], false);
        const code = await copy.proc.exited;
        if (code !== 0) throw new Error(`nbdcopy ${n} exited ${code}:\n${tail(copy.stderr)}`);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    const totalS = (performance.now() - t0) / 1000;
    let same = true;
    for (const n of names) same &&= await identical(join(a, `${n}.img`), join(b, `${n}.img`));
    return { totalS, identical: same };
  } finally {
    for (const p of servers) await p.stop();
    rmSync(a, { recursive: true, force: true });
    rmSync(b, { recursive: true, force: true });
  }
}

export async function main(argv: string[]): Promise<void> {
  const { values: v } = parseArgs({ args: argv, options: opts });
  const vms = v.quick ? 4 : Number(v.vms);
  const dataMiB = v.quick ? 64 : Number(v["data-mib"]);
  const levels = v.quick ? [2] : v.concurrency.split(",").map(Number);
  const root = join(tmpdir(), `wanmig-bench-evacuate-${process.pid}`);
  mkdirSync(root, { recursive: true });
  const template = join(root, "template.img");
  await $`head -c ${dataMiB * MiB} /dev/urandom > ${template}`;
  const results: Level[] = [];
  const peers: { concurrency: number; totalS: number; ratio: number; identical: boolean }[] = [];
  try {
    await netSetup();
    const tbf = await shape(parseRate(v.budget) * 8);
    console.log(`evacuate: ${vms} VMs of ${dataMiB} MiB (random data), A to B over a veth shaped to the budget (${tbf}); wanmig --group --bandwidth ${v.budget}; one VM alone first`);
    const alone = await level(root, template, 1, 1, v.budget, dataMiB * MiB);
    console.log(`  one VM alone: ${alone.totalS.toFixed(1)} s = ${alone.ratio.toFixed(2)} × its data over the budget; storage downtime ${alone.worstDowntimeMs} ms`);
    for (const c of levels) {
      const r = await level(root, template, vms, c, v.budget, dataMiB * MiB);
      results.push(r);
      if (!v["no-peer"]) {
        const p = await peerLevel(root, template, vms, c);
        peers.push({ concurrency: c, totalS: p.totalS, ratio: p.totalS / r.ideal, identical: p.identical });
        console.log(`  peer, nbdcopy ${c} at a time: ${p.totalS.toFixed(1)} s; copies ${p.identical ? "identical" : "DIFFER"}`);
      }
      console.log(
        `  concurrency ${c}: ${r.totalS.toFixed(1)} s (data over the budget ${r.ideal.toFixed(1)} s); storage downtimes ${r.downtimesMs.join(", ")} ms; source host peak RSS ${r.peakRssMiB.toFixed(0)} MiB, CPU ${r.cpuS.toFixed(1)} s (${((r.cpuS / r.totalS) * 100).toFixed(0)} % of one core); images ${r.identical ? "identical" : "DIFFER"}`,
      );
    }
    console.log("");
    for (const r of results) {
      const target = r.ratio <= 1.15 && r.worstDowntimeMs <= alone.worstDowntimeMs + 20 ? "" : "  (over target)";
      const peer = peers.find((p) => p.concurrency === r.concurrency);
      const vsPeer = peer ? `; nbdcopy ${peer.totalS.toFixed(1)} s = ${peer.ratio.toFixed(2)} ×, wanmig/nbdcopy ${(r.totalS / peer.totalS).toFixed(2)}` : "";
      console.log(`evacuate: ${r.vms} VMs, concurrency ${r.concurrency}: ${r.totalS.toFixed(1)} s = ${r.ratio.toFixed(2)} × the data over the budget; worst storage downtime ${r.worstDowntimeMs} ms (alone ${alone.worstDowntimeMs} ms)${vsPeer}${target}`);
    }
    if (v.json) writeFileSync(v.json, `${JSON.stringify({ alone, results, peers }, null, 2)}\n`);
    if (results.some((r) => !r.identical) || peers.some((p) => !p.identical)) process.exitCode = 1;
  } finally {
    await cleanup();
    rmSync(root, { recursive: true, force: true });
  }
}
