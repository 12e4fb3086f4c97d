// Downtime benchmark (issue 12): the storage downtime of a live disk migration under
// writers from gentle to as-fast-as-they-go, on loopback, a 1 Gbit/s link and the paper's
// WAN, side by side with QEMU's own live storage migration in the same run.
//
//   npm run bench -- downtime [--links loopback,1gbit,wan] [--writers none,static-web,dynamic-web,diabolical,random-4k,commit-4k]
//                             [--rows wanmig,wanmig-paper,qsd-background,qsd-write-blocking]
//                             [--runs 5] [--wan-runs 1] [--image-mib 256] [--data-mib 32] [--timeout-s 600] [--json FILE]
//                             [--events DIR]   (each wanmig run's NDJSON events and the writer's progress, to see why a row took long)
//
// The hosts and the paths are the migration benchmark's (scripts/bench/lib/topology.ts):
// loopback and 1gbit over the veth (1gbit shaped by tc tbf), the WAN through the link
// emulator (5 Mbit/s, 100 ms, TCP end to end), the rows talking to its addresses. The writer is `wanmig workload`
// (incompressible data) on the source's disk, started 1 s before the migration.
// Rows:
//   wanmig              wanmig serve → source → dest, --max-downtime 50ms (the default)
//   wanmig-paper        the same with --deltas paper
//   qsd-background      qemu-storage-daemon exports the disk to the writer, blockdev-mirror
//   qsd-write-blocking    to qemu-nbd at the destination (copy-mode background or
//                         write-blocking); at READY the writer is stopped (SIGSTOP: the VM
//                         pauses) and block-job-cancel finishes the copy: that is its downtime
// Per row: storage downtime p50/p95 (wanmig: fence to verified; qsd: the pause to the job's
// end), migration time (median), the highest throttle step, the writer's throughput until
// the fence or pause (median of runs) and its slowest whole second before the last one.
// Every run checks the destination equals the source (cmp).

import { $ } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ControlClient } from "../../src/disk/service/control-client.ts";
import { BUN, MAIN, MiB } from "./lib/constants.ts";
import { identical } from "./lib/images.ts";
import { Proc, tail } from "./lib/proc.ts";
import { cleanup, linkDown, linkUp, netSetup, NS_DST, NS_SRC, pathOf, rowHosts, type Scenario, tcpMem } from "./lib/topology.ts";
import { waitUntil } from "./lib/wait.ts";
import { mirrorRow } from "./peers/qsd-mirror.ts";

const LINKS: Record<string, Scenario> = {
  loopback: { name: "loopback", rateSpec: "none", bps: 0, rttMs: 0 },
  "1gbit": { name: "1gbit", rateSpec: "1gbit", bps: 1e9, rttMs: 0 },
  wan: { name: "wan", rateSpec: "5mbit", bps: 5e6, rttMs: 100 },
};
const ROWS = ["wanmig", "wanmig-paper", "qsd-background", "qsd-write-blocking"];
const WRITERS = ["none", "static-web", "dynamic-web", "diabolical", "random-4k", "commit-4k"];

interface Run {
  link: string;
  writer: string;
  row: string;
  ok: boolean;
  error?: string;
  downtimeMs?: number;
  estimateMs?: number;
  migrationS?: number;
  throttleSteps?: number;
  writerMBps?: number;
  writerMinMBps?: number;
}

interface Sample {
  t: number;
  bytes: number;
}

/** The writer's throughput from its samples up to `until`: the mean, and the slowest whole second before the last one. */
function writerRates(samples: Sample[], until: number): { mean?: number; min?: number } {
  const s = samples.filter((x) => x.t <= until);
  if (s.length < 2) return {};
  const mean = ((s.at(-1)!.bytes - s[0]!.bytes) / ((s.at(-1)!.t - s[0]!.t) / 1000)) / 1e6;
  let min: number | undefined;
  for (let i = 0; i < s.length; i++) {
    const j = s.findIndex((x) => x.t >= s[i]!.t + 1000);
    if (j < 0 || s[j]!.t > until - 1000) break;
    const r = (s[j]!.bytes - s[i]!.bytes) / ((s[j]!.t - s[i]!.t) / 1000) / 1e6;
    min = min === undefined ? r : Math.min(min, r);
  }
  return { mean, min };
}

/** What the writer says it had written, every 200 ms (`wanmig workload --json`): the same meter for every row. */
function writerSamples(vm: Proc | undefined, from: number): Sample[] {
  if (!vm) return [];
  return vm.stdoutLines.flatMap(({ t, line }) => {
    if (t < from) return [];
    const e = JSON.parse(line);
    return e.event === "progress" ? [{ t, bytes: e.bytesWritten as number }] : [];
  });
}

interface Ctx {
  image: string;
  sizeBytes: number;
  secret: string;
  port: number;
  timeoutMs: number;
  eventsDir?: string;
}

function writerProc(writer: string, runDir: string): Proc | undefined {
  if (writer === "none") return undefined;
  return new Proc("workload", NS_SRC, [BUN, MAIN, "workload", "--name", "vm", "--run-dir", runDir, "--pattern", writer, "--duration", "3600s", "--json", "--log", "error"], false);
}

async function runWanmig(sc: Scenario, writer: string, row: string, ctx: Ctx, dir: string): Promise<Run> {
  const r: Run = { link: sc.name, writer, row, ok: false };
  const { a, b, image } = await rowHosts(dir, ctx.image);
  const procs: Proc[] = [];
  try {
    const serve = new Proc("serve", NS_SRC, [BUN, MAIN, "serve", "--name", "vm", "--image", image, "--run-dir", a, "--log", "warn"], false);
    procs.push(serve);
    const ctl = new ControlClient(join(a, "vm.ctl"));
    await waitUntil(async () => (await ctl.status()).size > 0, "serve's control socket");
    const to = `${pathOf(sc).dst}:${ctx.port++}`;
    const dest = new Proc("dest", NS_DST, [BUN, MAIN, "dest", "--name", "vm", "--image", join(b, "vm.img"), "--run-dir", b, "--listen", to, "--secret-file", ctx.secret], false);
    procs.push(dest);
    await dest.waitFor(/listening on \S+:\d+/, "dest to listen");
    const vm = writerProc(writer, a);
    if (vm) procs.push(vm);
    await Bun.sleep(1000);
    const t0 = performance.now();
    const src = new Proc("source", NS_SRC, [BUN, MAIN, "source", "--name", "vm", "--run-dir", a, "--to", to, "--secret-file", ctx.secret, "--json", ...(row === "wanmig-paper" ? ["--deltas", "paper"] : [])], false);
    procs.push(src);
    const timer = setTimeout(() => src.proc.kill("SIGTERM"), ctx.timeoutMs);
    const code = await src.proc.exited;
    clearTimeout(timer);
    await Bun.sleep(100);
    let fencedAt = performance.now();
    let done: Record<string, number> | undefined;
    for (const { t, line } of src.stdoutLines) {
      const e = JSON.parse(line);
      if (e.event === "phase" && e.phase === "handoff") fencedAt = t;
      if (e.event === "done") done = e;
    }
    if (code !== 0 || !done) {
      r.error = `source exited ${code}: ${tail(src.stderr, 4)}`;
      return r;
    }
    r.downtimeMs = done.storageDowntimeMs;
    r.estimateMs = done.estimatedStorageDowntimeMs;
    r.migrationS = done.migrationTimeMs! / 1000;
    r.throttleSteps = done.throttleSteps;
    const w = writerRates(writerSamples(vm, t0), fencedAt);
    r.writerMBps = vm ? w.mean : undefined;
    r.writerMinMBps = vm ? w.min : undefined;
    await vm?.stop();
    await dest.waitFor(/now serving/, "dest to serve", 10_000).catch(() => undefined);
    r.ok = await identical(image, join(b, "vm.img"));
    if (!r.ok) r.error = "the images differ";
    return r;
  } catch (err) {
    r.error = (err as Error).message;
    return r;
  } finally {
    for (const p of procs.reverse()) await p.stop();
    if (ctx.eventsDir) await saveEvents(ctx.eventsDir, `${sc.name}-${writer}-${row}-${ctx.port}`, procs);
  }
}

function parsed(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    return line;
  }
}

/** Every process's stdout lines, stamped with their arrival (ms since the bench started). */
async function saveEvents(dir: string, label: string, procs: Proc[]): Promise<void> {
  const lines = procs.flatMap((p) => p.stdoutLines.map(({ t, line }) => JSON.stringify({ t: Math.round(t), proc: p.name, e: parsed(line) })));
  await Bun.write(join(dir, `${label}.ndjson`), `${lines.join("\n")}\n`);
}

async function runQsd(sc: Scenario, writer: string, row: string, ctx: Ctx, dir: string): Promise<Run> {
  const m = await mirrorRow({
    sc,
    dir,
    template: ctx.image,
    sizeBytes: ctx.sizeBytes,
    nextPort: () => ctx.port++,
    timeoutMs: ctx.timeoutMs,
    copyMode: row === "qsd-write-blocking" ? "write-blocking" : "background",
    writer: (runDir) => writerProc(writer, runDir),
  });
  const r: Run = { link: sc.name, writer, row, ok: m.ok, error: m.error, downtimeMs: m.downtimeMs, migrationS: m.migrationS };
  if (m.vm && m.t0 !== undefined && m.pausedAt !== undefined) {
    const w = writerRates(writerSamples(m.vm, m.t0), m.pausedAt);
    r.writerMBps = w.mean;
    r.writerMinMBps = w.min;
  }
  return r;
}

function pct(xs: number[], p: number): number | undefined {
  if (!xs.length) return undefined;
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

const f = (x: number | undefined, d = 0) => (x === undefined ? "—" : x.toFixed(d));

type Values = ReturnType<typeof parseOptions>;

function parseOptions(argv: string[]) {
  return parseArgs({
    args: argv,
    options: {
      links: { type: "string", default: "loopback,1gbit,wan" },
      writers: { type: "string", default: WRITERS.join(",") },
      rows: { type: "string", default: ROWS.join(",") },
      runs: { type: "string", default: "5" },
      "wan-runs": { type: "string", default: "1" },
      "image-mib": { type: "string", default: "256" },
      "data-mib": { type: "string", default: "32" },
      "timeout-s": { type: "string", default: "600" },
      json: { type: "string" },
      events: { type: "string" },
    },
  }).values;
}

/** Every run on one link: its path up (tbf on the veth, or the link emulator), each writer × run × row, the path down. */
async function runLink(sc: Scenario, values: Values, ctx: Ctx, base: string, runs: Run[]): Promise<void> {
  console.error(`link ${sc.name}: ${await linkUp(sc)}; ${await tcpMem()}`);
  try {
    const n = Number(sc.rttMs > 0 ? values["wan-runs"] : values.runs);
    for (const writer of values.writers!.split(","))
      for (let i = 0; i < n; i++)
        for (const row of values.rows!.split(",")) {
          const dir = mkdtempSync(join(base, "run-"));
          const run = row.startsWith("qsd") ? await runQsd(sc, writer, row, ctx, dir) : await runWanmig(sc, writer, row, ctx, dir);
          rmSync(dir, { recursive: true, force: true });
          runs.push(run);
          console.error(
            `${sc.name} ${writer} ${row} #${i + 1}: ${run.ok ? "ok" : `FAILED (${run.error})`} downtime ${f(run.downtimeMs)} ms` +
              `${run.estimateMs !== undefined ? ` (estimate ${run.estimateMs})` : ""}, migration ${f(run.migrationS, 1)} s, throttle ${f(run.throttleSteps)}, writer ${f(run.writerMBps, 1)} MB/s (slowest second ${f(run.writerMinMBps, 1)})`,
          );
        }
  } finally {
    const counts = await linkDown();
    if (counts) console.error(`link ${sc.name}: link emulator ${JSON.stringify(counts)}`);
  }
}

/** The table: a row per link, writer and row, over its runs. */
function table(runs: Run[]): string {
  const lines = ["| link | writer | row | runs ok | storage downtime p50 / p95 (ms) | estimate p50 (ms) | migration (s, median) | throttle steps (max) | writer MB/s (median; slowest second) |", "|---|---|---|---|---|---|---|---|---|"];
  const keys = [...new Set(runs.map((r) => `${r.link}\t${r.writer}\t${r.row}`))];
  for (const k of keys) {
    const [link, writer, row] = k.split("\t");
    const rs = runs.filter((r) => r.link === link && r.writer === writer && r.row === row);
    const ok = rs.filter((r) => r.ok);
    const dt = ok.map((r) => r.downtimeMs!);
    const est = ok.flatMap((r) => (r.estimateMs === undefined ? [] : [r.estimateMs]));
    const wr = ok.flatMap((r) => (r.writerMBps === undefined ? [] : [r.writerMBps]));
    const wmin = ok.flatMap((r) => (r.writerMinMBps === undefined ? [] : [r.writerMinMBps]));
    lines.push(
      `| ${link} | ${writer} | ${row} | ${ok.length}/${rs.length} | ${f(pct(dt, 50))} / ${f(pct(dt, 95))} | ${f(pct(est, 50))} | ${f(pct(ok.map((r) => r.migrationS!), 50), 1)} | ${f(Math.max(0, ...ok.map((r) => r.throttleSteps ?? 0)))} | ${f(pct(wr, 50), 1)}; ${f(wmin.length ? Math.min(...wmin) : undefined, 1)} |`,
    );
  }
  return lines.join("\n");
}

export async function main(argv: string[]): Promise<void> {
  const values = parseOptions(argv);
  const links = values.links!.split(",").map((name) => {
    const sc = LINKS[name];
    if (!sc) throw new Error(`no link ${name}: ${Object.keys(LINKS).join(", ")}`);
    return sc;
  });
  const base = mkdtempSync(join(tmpdir(), "wanmig-bench-downtime-"));
  for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => void cleanup().then(() => process.exit(130)));
  const ctx: Ctx = { image: join(base, "image"), sizeBytes: Number(values["image-mib"]) * MiB, secret: join(base, "secret"), port: 19000, timeoutMs: Number(values["timeout-s"]) * 1000, eventsDir: values.events };
  const runs: Run[] = [];
  try {
    if (ctx.eventsDir) await $`mkdir -p ${ctx.eventsDir}`;
    await $`truncate -s ${ctx.sizeBytes} ${ctx.image}`;
    await $`dd if=/dev/urandom of=${ctx.image} bs=1M count=${values["data-mib"]} conv=notrunc status=none`;
    await Bun.write(ctx.secret, Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("hex"));
    await $`chmod 600 ${ctx.secret}`;
    await netSetup();
    for (const sc of links) await runLink(sc, values, ctx, base, runs);
  } finally {
    await cleanup();
    rmSync(base, { recursive: true, force: true });
  }
  console.log(table(runs));
  if (values.json) await Bun.write(values.json, JSON.stringify({ args: values, runs }, null, 2));
}
