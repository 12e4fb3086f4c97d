// Evacuation benchmark (issue 34): N VMs leave one host at once, at concurrency 1, 2 and 4,
// under one bandwidth budget. Every source is started at the same moment with `--group`
// (the host-wide slots and the shared budget an evacuation uses), as Ansible starts them.
//
//   npm run bench -- evacuate [--vms 8] [--data-mib 256] [--budget 200mbit] [--concurrency 1,2,4] [--json FILE]
//   npm run bench -- evacuate --quick        (4 VMs of 64 MiB at concurrency 2: about a minute)
//
// Host A and host B are directories on this machine and the moves go over loopback TCP, so
// the budget (the token bucket every source shares) is the link: what is measured is how
// well the group shares it and what running several moves at once costs each one.
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
      hostA.push(new Proc(`serve ${n}`, "", [BUN, MAIN, "serve", "--name", n, "--image", join(a, `${n}.img`), "--run-dir", a, "--log", "warn"], true));
      await waitUntil(async () => (await new ControlClient(join(a, `${n}.ctl`)).status()).size > 0, `serve ${n}`);
    }
    const to: Record<string, string> = {};
    for (const n of names) {
      to[n] = `127.0.0.1:${port++}`;
      const d = new Proc(`dest ${n}`, "", [BUN, MAIN, "dest", "--name", n, "--image", join(b, `${n}.img`), "--run-dir", b, "--listen", to[n]!, "--insecure", "--log", "info"], false);
      others.push(d);
      await d.waitFor(/listening on \S+:\d+/, `dest ${n} to listen`);
    }
    let peakKiB = 0;
    const t0 = performance.now();
    const sources = names.map((n) => new Proc(`source ${n}`, "", [BUN, MAIN, "source", "--name", n, "--run-dir", a, "--to", to[n]!, "--insecure", "--group", "evacuate", "--concurrency", String(concurrency), "--bandwidth", budget, "--json", "--log", "warn"], true));
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
  try {
    console.log(`evacuate: ${vms} VMs of ${dataMiB} MiB (random data) over loopback, budget ${v.budget} shared by the group; one VM alone first`);
    const alone = await level(root, template, 1, 1, v.budget, dataMiB * MiB);
    console.log(`  one VM alone: ${alone.totalS.toFixed(1)} s = ${alone.ratio.toFixed(2)} × its data over the budget; storage downtime ${alone.worstDowntimeMs} ms`);
    for (const c of levels) {
      const r = await level(root, template, vms, c, v.budget, dataMiB * MiB);
      results.push(r);
      console.log(
        `  concurrency ${c}: ${r.totalS.toFixed(1)} s (data over the budget ${r.ideal.toFixed(1)} s); storage downtimes ${r.downtimesMs.join(", ")} ms; source host peak RSS ${r.peakRssMiB.toFixed(0)} MiB, CPU ${r.cpuS.toFixed(1)} s (${((r.cpuS / r.totalS) * 100).toFixed(0)} % of one core); images ${r.identical ? "identical" : "DIFFER"}`,
      );
    }
    console.log("");
    for (const r of results) {
      const target = r.ratio <= 1.15 && r.worstDowntimeMs <= alone.worstDowntimeMs + 20 ? "" : "  (over target)";
      console.log(`evacuate: ${r.vms} VMs, concurrency ${r.concurrency}: ${r.totalS.toFixed(1)} s = ${r.ratio.toFixed(2)} × the data over the budget; worst storage downtime ${r.worstDowntimeMs} ms (alone ${alone.worstDowntimeMs} ms)${target}`);
    }
    if (v.json) writeFileSync(v.json, `${JSON.stringify({ alone, results }, null, 2)}\n`);
    if (results.some((r) => !r.identical)) process.exitCode = 1;
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}
