// The paper's evaluation (Bradford et al., VEE 2007, section 5), with a real guest: its four
// workloads inside a QEMU guest (TCG) whose disk is on wanmig, its clients outside, a live
// migration under each, and its table with its own figures beside ours (issue 17).
//
//   npm run bench -- paper [--scenario lan,wan] [--workloads static,dynamic,video,diabolical]
//                          [--modes live,live-paper,freeze] [--runs 1] [--row-limit-s 900] [--quick]
//                          [--baseline-s S] [--after-s S] [--report DIR] [--keep-logs DIR] [--json FILE]
//                          [--ram-check]   (B held at the switchover, guest RAM compared: a failed
//                                           guest laid at QEMU's door or ours, lib/ram-blame.ts)
//                          [--max-request SIZE] (the serve's NBD maximum) [--xbzrle auto|off] (the source's)
//
// Each row, on fresh hosts (three network namespaces):
//   C (the clients) --veth, unshaped-- A (serve, the guest on tap0, source) --veth, shaped-- B (dest, QEMU -incoming, tap0)
// - A's image: 1 GiB, ext4 made here; the guest (512 MiB RAM, scripts/guest/init.sh
//   mode=paper) serves its web pages, posts and video from it, and with the diabolical
//   workload runs its Bonnie-like writer besides.
// - The client (scripts/bench/paper-client.ts, in C) runs from --baseline-s before the
//   migration until --after-s after the VM runs at B; its operations are the disruption's
//   input (report/disruption.ts). The diabolical row's client is the static one.
// - The migration: `wanmig source --hypervisor qemu --old-ip GUEST --tunnel vxlan`; after the
//   move the clients reach the guest at B through the tunnel from A.
// - Modes: `live` (wanmig's defaults), `live-paper` (`--deltas paper` and the paper's
//   throttle: 16384 deltas, 2 ms, doubling), `freeze` (`--mode freeze-and-copy`: the guest
//   paused while its whole disk is copied).
// - After the row: the dynamic client's acknowledged posts are looked up in the guest's
//   posts file on B's image (journal replayed first): every one must be there.
// Links: LAN 100 Mbit/s (the paper's switched Ethernet): tbf shapes both directions of the
// A–B veth. WAN 5 Mbit/s with 100 ms RTT: the link emulator (lib/link.ts) joins A and B
// with addresses of its own, and everything between them goes over it, TCP end to end:
// wanmig's stream, QEMU's memory stream, and the tunnel (VXLAN over UDP), whose endpoints
// are the migration connection's addresses: after the move the clients reach B over the WAN.
// Needs root (namespaces, tc, taps) and QEMU.
import { $ } from "bun";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { buildGuest, type Guest, startGuest } from "../../test/helpers/guest.ts";
import { type GuestHosts, guestHosts } from "../../test/helpers/netns.ts";
import { parseRate } from "../../src/net/rate.ts";
import { Timeline } from "../../src/report/timeline.ts";
import { BUN, MAIN } from "./lib/constants.ts";
import { EmulatedLink } from "./lib/link.ts";
import { Proc, tail } from "./lib/proc.ts";
import { type Scenario, shapeEnds } from "./lib/topology.ts";
import type { OpLine } from "./paper-client.ts";
import { holdAndCompare, type RamVerdict } from "../../test/helpers/ram-check.ts";
import { type Blame, blame, blameText } from "./lib/ram-blame.ts";
import { lostPosts, medianFigures, parsePosts, type RowEvents, type RowFigures, rowFigures } from "./paper-figures.ts";

const CLIENT = join(import.meta.dir, "paper-client.ts");
const WORKLOADS = ["static", "dynamic", "video", "diabolical"] as const;
type Workload = (typeof WORKLOADS)[number];
const MODES = ["live", "live-paper", "freeze"] as const;
type Mode = (typeof MODES)[number];

export const SCENARIOS: Record<string, Scenario> = {
  lan: { name: "lan", rateSpec: "100mbit", bps: parseRate("100mbit") * 8, rttMs: 0 },
  wan: { name: "wan", rateSpec: "5mbit", bps: parseRate("5mbit") * 8, rttMs: 100 },
};

const MODE_ARGS: Record<Mode, string[]> = {
  live: [],
  "live-paper": ["--deltas", "paper", "--throttle-threshold", "16384", "--throttle-delay", "2ms"],
  freeze: ["--mode", "freeze-and-copy"],
};
const MODE_LABEL: Record<Mode, string> = {
  live: "wanmig live (defaults)",
  "live-paper": "wanmig live, --deltas paper + the paper's throttle",
  freeze: "freeze-and-copy",
};

/** The paper's own figures (its table and section 5.4), where it gives one. */
const PAPER: Record<string, string> = {
  "lan/static": "1.04 s",
  "lan/dynamic": "3.09 s",
  "lan/video": "3.04 s",
  "wan/static": "68 s",
  "lan/diabolical": "811 s migration, throttled twice",
};

const GUEST_RAM_MIB = 512;
const IMAGE_BYTES = 1024 ** 3;

/** Stops the row under way (its guests, processes and namespaces): what an interrupt must not leave behind. */
let rowStop: (() => Promise<void>) | undefined;

/** The WAN's A and B ends on the link emulator: outside guestHosts's networks (10.30-229.x.x). */
const EMU_A = "10.250.0.1";
const EMU_B = "10.250.0.2";

/** A row's hosts, and the A–B path: the addresses A and B reach each other at, and its removal (the emulator, then the namespaces). */
interface RowNet {
  net: GuestHosts;
  a: string;
  b: string;
  remove(): Promise<void>;
}

/** Three fresh namespaces per row, so that nothing a row leaves behind (a tunnel, a route) meets the next; the A–B path as the scenario asks. */
async function makeNet(sc: Scenario): Promise<RowNet> {
  const net = await guestHosts("wp");
  try {
    if (sc.rttMs > 0) {
      const link = await EmulatedLink.start(net.ns.A, net.ns.B, { bps: sc.bps, rttMs: sc.rttMs, loss: sc.loss, addrA: EMU_A, addrB: EMU_B });
      const remove = async () => {
        await link.stop();
        await net.remove();
      };
      return { net, a: EMU_A, b: EMU_B, remove };
    }
    // The A–B veth: tbf each way (burst ≥ 2 ms of line rate, queue ≤ 100 ms).
    await shapeEnds([[net.ns.A, net.wan.a], [net.ns.B, net.wan.b]], sc.bps);
  } catch (err) {
    await net.remove();
    throw err;
  }
  return { net, a: net.ip.aWan, b: net.ip.bWan, remove: () => net.remove() };
}

interface Ctx {
  dir: string;
  secret: string;
  baselineS: number;
  afterS: number;
  reportDir?: string;
  logDir?: string;
  /** A migration not done by then is interrupted and the row fails. */
  rowLimitS: number;
  /** --ram-check: hold B's QEMU at the switchover and compare guest RAM (lib/ram-blame.ts). */
  ramCheck: boolean;
  /** --max-request: the serve's advertised NBD maximum (what the guest can hold in flight). */
  maxRequest?: string;
  /** --xbzrle auto|off: the source's (a before/after of XBZRLE on the WAN rows). */
  xbzrle?: string;
}

export interface RunResult {
  scenario: string;
  workload: Workload;
  mode: Mode;
  run: number;
  ok: boolean;
  error?: string;
  figures?: RowFigures;
  acked?: number;
  lost?: number[];
  timeline?: string;
  /** --ram-check: pages of guest RAM that differed at the switchover, and whose fault a failed guest is. */
  ram?: RamVerdict;
  blame?: Blame;
  notes: string[];
}

const clientArgs = (w: Workload, guest: string): string[] =>
  w === "dynamic" ? ["post", `http://${guest}`] : w === "video" ? ["video", `http://${guest}/cgi-bin/video`] : ["static", `http://${guest}/`];

const parsed = new WeakMap<Proc, { lines: number; events: { t: number; e: Record<string, any> }[] }>();

/**
 * A process's JSON stdout lines, each parsed once, with the instant (performance.now()) it
 * arrived: waitEvent polls every 100 ms, and a WAN row's source prints thousands of lines.
 */
function events(p: Proc): { t: number; e: Record<string, any> }[] {
  const seen = parsed.get(p) ?? { lines: 0, events: [] };
  parsed.set(p, seen);
  for (; seen.lines < p.stdoutLines.length; seen.lines++) {
    const { t, line } = p.stdoutLines[seen.lines]!;
    try {
      seen.events.push({ t, e: JSON.parse(line) });
    } catch {}
  }
  return seen.events;
}

async function waitEvent(p: Proc, what: string, pick: (e: Record<string, any>) => boolean, timeoutMs: number): Promise<Record<string, any>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const e = events(p).find((x) => pick(x.e));
    if (e) return e.e;
    if (p.proc.exitCode !== null) throw new Error(`${p.name} exited ${p.proc.exitCode} before ${what}:\n${tail(p.stderr)}`);
    if (Date.now() > end) throw new Error(`no ${what} within ${Math.round(timeoutMs / 1000)} s:\n${tail(p.stderr)}`);
    await Bun.sleep(100);
  }
}

/** The row as the paper's figures draw it: the migration's timeline (the source's events) over the client's answers per second. */
function timeline(source: Proc, ops: readonly OpLine[], title: string): string {
  const wallOffset = Date.now() - performance.now(); // Proc stamps lines with performance.now()
  const t = new Timeline();
  for (const { t: at, e } of events(source)) t.add(e, at + wallOffset);
  let n = 0;
  const answered = ops.filter((op) => op.ok).sort((a, b) => a.end - b.end).map((op) => ({ t: op.end, v: ++n }));
  t.addCounter("the client: successful operations per second", "answers", answered);
  return t.svg(title);
}

/** The ids in the guest's posts file on `image` (its journal replayed first, as a mount would). */
async function postsOnImage(image: string): Promise<number[]> {
  await $`e2fsck -E journal_only -y ${image}`.nothrow().quiet();
  const r = await $`debugfs -R ${"cat /posts"} ${image}`.nothrow().quiet();
  return parsePosts(r.stdout.toString());
}

/** The guests' failures (oopses, verify failures), each named by its host. */
function guestFailuresAt(g: { src?: Guest; dst?: Guest }): string[] {
  return [...(g.src?.failures() ?? []).map((f) => `at A: ${f}`), ...(g.dst?.failures() ?? []).map((f) => `at B: ${f}`)];
}

async function runRow(sc: Scenario, w: Workload, mode: Mode, n: number, ctx: Ctx): Promise<RunResult> {
  const r: RunResult = { scenario: sc.name, workload: w, mode, run: n, ok: false, notes: [] };
  const label = `${sc.name}-${w}-${mode}-${n}`;
  const dir = join(ctx.dir, label);
  const a = join(dir, "A");
  const b = join(dir, "B");
  mkdirSync(a, { recursive: true });
  mkdirSync(b, { recursive: true });
  const image = join(a, "vm.img");
  const destImage = join(b, "vm.img");
  await $`truncate -s ${IMAGE_BYTES} ${image}`;
  await $`mkfs.ext4 -q -F ${image}`;
  const rowNet = await makeNet(sc);
  const { net } = rowNet;
  const procs: Proc[] = [];
  const guests: Guest[] = [];
  const start = (name: string, ns: string, argv: string[]) => {
    const p = new Proc(name, ns, argv, false);
    procs.push(p);
    return p;
  };
  const nic = net.nic;
  /** The RAM check under way (--ram-check): its verdict is kept even when the row fails (a guest that died at B is when it matters). */
  let ram: Promise<RamVerdict> | undefined;
  let guestsAt: { src?: Guest; dst?: Guest } = {};
  const stopAll = async () => {
    for (const g of guests) await g.stop();
    for (const p of [...procs].reverse()) await p.stop();
  };
  rowStop = async () => {
    await stopAll();
    await rowNet.remove();
  };
  try {
    start("serve", net.ns.A, [BUN, MAIN, "serve", "--name", "vm", "--image", image, "--run-dir", a, "--log", "warn", ...(ctx.maxRequest ? ["--max-request", ctx.maxRequest] : [])]);
    const src = startGuest({ name: "src", dir: a, nbdSocket: join(a, "vm.nbd"), openTimeout: 60, netnsExec: ["ip", "netns", "exec", net.ns.A], nic, mode: "paper", bonnie: w === "diabolical", ramMiB: GUEST_RAM_MIB });
    guests.push(src);
    await src.waitFor(/GUEST BOOTED paper/, 180_000);
    const client = start("client", net.ns.C, [BUN, CLIENT, ...clientArgs(w, net.ip.guest), "--duration", "7200", "--timeout-ms", "60000"]);
    await Bun.sleep(ctx.baselineS * 1000);
    if (!client.stdoutLines.some(({ line }) => line.includes('"ok":true'))) throw new Error(`the client had no answer from the guest in ${ctx.baselineS} s:\n${tail(client.stderr)}`);

    const port = 7400;
    const mport = 4444;
    const release = join(b, "ram-checked");
    const hold = ctx.ramCheck ? ["env", `WANMIG_TEST_HOLD_AT=dest-cont:${release}`] : [];
    const dest = start("dest", net.ns.B, [
      ...hold, BUN, MAIN, "dest", "--name", "vm", "--image", destImage, "--run-dir", b, "--listen", `${rowNet.b}:${port}`, "--secret-file", ctx.secret,
      "--hypervisor", "qemu", "--qmp", `unix:${join(b, "dst.qmp")}`, "--vm-dev", "tap0", "--json",
    ]);
    await dest.waitFor(/listening on/, "dest to listen");
    const dst = startGuest({ name: "dst", dir: b, nbdSocket: join(b, "vm.nbd"), netnsExec: ["ip", "netns", "exec", net.ns.B], incoming: `tcp:${rowNet.b}:${mport}`, hold: ctx.ramCheck, openTimeout: 3600, nic, mode: "paper", bonnie: w === "diabolical", ramMiB: GUEST_RAM_MIB });
    guests.push(dst);
    guestsAt = { src, dst };
    ram = ctx.ramCheck ? holdAndCompare({ src: () => src.testQmp(), dst: () => dst.testQmp() }, { dir, ramBytes: src.ramBytes, release, timeoutMs: ctx.rowLimitS * 1000 }) : undefined;
    ram?.catch(() => undefined); // awaited after the migration
    // Both streams, and the tunnel after them, go to B's end of the path: over the WAN, the link emulator's.
    const to = `${rowNet.b}:${port}`;
    const migrateUri = `tcp:${rowNet.b}:${mport}`;
    const requestedAt = Date.now();
    const source = start("source", net.ns.A, [
      BUN, MAIN, "source", "--name", "vm", "--run-dir", a, "--to", to, "--secret-file", ctx.secret, "--json",
      "--hypervisor", "qemu", "--qmp", `unix:${src.qmpPath}`, "--migrate-uri", migrateUri,
      "--old-ip", net.ip.guest, "--tunnel", "vxlan", ...MODE_ARGS[mode], ...(ctx.xbzrle ? ["--xbzrle", ctx.xbzrle] : []),
    ]);
    const limitMs = ctx.rowLimitS * 1000;
    const done = await waitEvent(source, "the migration's done event", (e) => e.event === "done", limitMs).catch(async (err) => {
      // Over the row's limit: the source is interrupted when the row ends.
      if (source.proc.exitCode === null) throw new Error(`not done within ${ctx.rowLimitS} s (the source is interrupted)`);
      throw err;
    });
    const running = await waitEvent(dest, "the VM running at B", (e) => e.event === "running", 120_000);
    const paused = events(source).find((x) => x.e.event === "paused")?.e;
    await Bun.sleep(ctx.afterS * 1000);
    await client.stop();
    await Bun.sleep(100);
    const ops = events(client).map((x) => x.e as OpLine);
    const ev: RowEvents = { requestedAt, pausedAt: paused?.at, runningAt: running.at, done: done as RowEvents["done"] };
    r.figures = rowFigures(ev, ops);
    if (ctx.reportDir) {
      r.timeline = join(ctx.reportDir, `${label}.svg`);
      writeFileSync(r.timeline, timeline(source, ops, `${sc.name.toUpperCase()}, ${w}, ${MODE_LABEL[mode]}: downtime ${s(r.figures.downtimeMs)}, disruption ${s(r.figures.disruptionMs)}`));
    }
    r.ram = await ram?.catch((err) => void r.notes.push(`RAM check: ${(err as Error).message}`));
    if (r.ram) r.notes.push(`RAM at the switchover: ${r.ram.pagesDiffering} pages differ (B held ${r.ram.heldMs} ms for the dumps, in the downtime)`);
    const failures = guestFailuresAt(guestsAt);
    r.blame = blame(failures, r.ram);
    if (failures.length) {
      r.notes.push(`guest: ${failures.slice(0, 3).join(" | ")}`);
      r.error = blameText(r.blame, r.ram, failures[0]!.replace(/^(at \w): \d+ /, "$1: ").replace(/^(at \w): \[\s*[\d.]+\] /, "$1: "));
    }
    r.ok = failures.length === 0;
    if (w === "dynamic") {
      await dst.stop();
      await dest.stop();
      const lost = lostPosts(ops, await postsOnImage(destImage));
      r.acked = ops.filter((op) => op.acked).length;
      r.lost = lost;
      if (lost.length) {
        r.ok = false;
        r.error = `${lost.length} acknowledged posts are not on B's disk: ${lost.slice(0, 10).join(", ")}`;
      }
    }

    return r;
  } catch (err) {
    r.error = (err as Error).message;
    r.ram ??= await ram?.catch(() => undefined);
    const failures = guestFailuresAt(guestsAt);
    r.blame = blame(failures, r.ram);
    if (failures.length) r.error = `${r.error}; ${blameText(r.blame, r.ram, failures[0]!)}`;
    return r;
  } finally {
    rowStop = undefined;
    await stopAll();
    if (ctx.logDir) {
      mkdirSync(ctx.logDir, { recursive: true });
      for (const p of procs) writeFileSync(join(ctx.logDir, `${label}-${p.name}.log`), `${p.stderr}\n${p.stdoutLines.map((l) => l.line).join("\n")}\n`);
      for (const [i, g] of guests.entries()) writeFileSync(join(ctx.logDir, `${label}-guest${i}.log`), g.lines.map((l) => `${l.t} ${l.text}`).join("\n"));
    }
    await rowNet.remove();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- the table ------------------------------------------------------------------------------

const s = (ms?: number, d = 2) => (ms === undefined ? "–" : `${(ms / 1000).toFixed(d)} s`);

export function table(results: RunResult[], scenarios: Scenario[]): string {
  const out: string[] = [];
  for (const sc of scenarios) {
    const link = sc.rttMs ? `${sc.rateSpec}, ${sc.rttMs} ms RTT` : sc.rateSpec;
    out.push(`\n### ${sc.name.toUpperCase()} (${link})\n`);
    out.push("| workload | mode | runs | downtime | disruption | additional disruption | migration time | storage downtime | deltas | delta rate | throttle steps | failed ops | the paper |");
    out.push("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (const w of WORKLOADS)
      for (const m of MODES) {
        const rs = results.filter((x) => x.scenario === sc.name && x.workload === w && x.mode === m);
        if (!rs.length) continue;
        const good = rs.filter((x) => x.ok && x.figures);
        const paper = m === "freeze" ? (PAPER[`${sc.name}/${w}`] ? "much worse" : "") : (PAPER[`${sc.name}/${w}`] ?? "");
        // A run that went wrong after its figures were taken (the guest crashed at B) still shows them, marked.
        const shown = good.length ? good : rs.filter((x) => x.figures);
        const errors = [...new Set(rs.filter((x) => !x.ok).map((x) => x.error?.split("\n")[0] ?? "?"))];
        const runsCell = good.length === rs.length ? `${rs.length}` : `${good.length} of ${rs.length} ok (${errors.join("; ")})`;
        if (!shown.length) {
          out.push(`| ${w} | ${MODE_LABEL[m]} | ${runsCell} | | | | | | | | | | ${paper} |`);
          continue;
        }
        const f = medianFigures(shown.map((x) => x.figures!));
        const posts = w === "dynamic" ? ` (${shown.reduce((a, x) => a + (x.acked ?? 0), 0)} posts acked, ${shown.reduce((a, x) => a + (x.lost?.length ?? 0), 0)} lost)` : "";
        out.push(
          `| ${w} | ${MODE_LABEL[m]} | ${runsCell} | ${s(f.downtimeMs)} | **${s(f.disruptionMs)}** | ${s(f.additionalMs)} | ${f.migrationS === undefined ? "–" : `${f.migrationS.toFixed(1)} s`} | ${s(f.storageDowntimeMs, 3)} | ${Math.round(f.deltas)} | ${Math.round(f.deltaRate)}/s | ${Math.round(f.throttleSteps)} | ${Math.round(f.failedOps)}${posts} | ${paper} |`,
        );
      }
  }
  return out.join("\n");
}

// ---- main -------------------------------------------------------------------------------------

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      scenario: { type: "string" },
      workloads: { type: "string", default: WORKLOADS.join(",") },
      modes: { type: "string", default: MODES.join(",") },
      runs: { type: "string", default: "1" },
      "row-limit-s": { type: "string", default: "900" },
      quick: { type: "boolean", default: false },
      "baseline-s": { type: "string", default: "8" },
      "after-s": { type: "string", default: "8" },
      report: { type: "string" },
      "keep-logs": { type: "string" },
      "ram-check": { type: "boolean", default: false },
      "max-request": { type: "string" },
      xbzrle: { type: "string" },
      json: { type: "string" },
    },
  });
  const pick = <T extends string>(list: string, all: readonly T[], what: string): T[] =>
    list.split(",").map((x) => {
      if (!all.includes(x as T)) throw new Error(`unknown ${what} ${x}: ${all.join(", ")}`);
      return x as T;
    });
  const scenarios = (values.scenario ?? (values.quick ? "lan" : "lan,wan")).split(",").map((x) => {
    const sc = SCENARIOS[x];
    if (!sc) throw new Error(`unknown scenario ${x}: lan, wan`);
    return sc;
  });
  const workloads = pick(values.workloads!, WORKLOADS, "workload");
  const modes = pick(values.modes!, MODES, "mode");
  const runs = Number(values.runs);
  const dir = mkdtempSync("/var/tmp/wanmig-paper-");
  const secret = join(dir, "secret");
  writeFileSync(secret, `${Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64")}\n`, { mode: 0o600 });
  if (values.report) mkdirSync(values.report, { recursive: true });
  const ctx: Ctx = { dir, secret, baselineS: Number(values["baseline-s"]), afterS: Number(values["after-s"]), reportDir: values.report, logDir: values["keep-logs"], rowLimitS: Number(values["row-limit-s"]), ramCheck: values["ram-check"]!, maxRequest: values["max-request"], xbzrle: values.xbzrle };
  await buildGuest();
  const t0 = Date.now();
  const results: RunResult[] = [];
  const heading = () => `## The paper's evaluation, reproduced (guest: ${GUEST_RAM_MIB} MiB RAM, 1 GiB disk, QEMU TCG; ${runs} run(s) per row, medians)`;
  // Interrupted (a long WAN row, say): the rows done so far are still a table.
  const onSignal = async () => {
    // The row under way first: its QEMUs, serve, clients and namespaces would outlive us.
    await rowStop?.().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
    console.log(`${heading()}, interrupted after ${((Date.now() - t0) / 60000).toFixed(1)} min`);
    console.log(table(results, scenarios));
    process.exit(130);
  };
  process.on("SIGINT", onSignal);
  try {
    for (const sc of scenarios)
      for (const w of workloads)
        for (const m of modes)
          for (let n = 1; n <= runs; n++) {
            const rowT0 = Date.now();
            const r = await runRow(sc, w, m, n, ctx);
            results.push(r);
            if (values.json) writeFileSync(values.json, `${JSON.stringify(results, null, 1)}\n`);
            const f = r.figures;
            console.error(
              `${sc.name} ${w} ${m} #${n}: ${r.ok ? "ok" : `FAILED: ${r.error?.split("\n")[0]}`}` +
                (f ? `; downtime ${s(f.downtimeMs)}, disruption ${s(f.disruptionMs)}, migration ${f.migrationS?.toFixed(1)} s, deltas ${f.deltas}, throttle ${f.throttleSteps}, failed ops ${f.failedOps}, storage downtime ${s(f.storageDowntimeMs, 3)}${f.pauseDrainMiB !== undefined ? `, pause drained ${f.pauseDrainMiB.toFixed(1)} MiB` : ""}` : "") +
                (r.ram ? `; RAM at the switchover: ${r.ram.pagesDiffering} pages differ (held ${r.ram.heldMs} ms)` : "") +
                ` (row ${Math.round((Date.now() - rowT0) / 1000)} s)`,
            );
          }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const minutes = ((Date.now() - t0) / 60000).toFixed(1);
  console.log(heading());
  console.log(table(results, scenarios));
  console.log(`\nDisruption: the longest stretch between two normal client operations, less what a normal one may take (src/report/disruption.ts). Whole run: ${minutes} min.`);
  if (results.some((r) => !r.ok)) process.exitCode = 1;
}

if (import.meta.main) await main(process.argv.slice(2));
