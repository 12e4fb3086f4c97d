// One row of the migrate bench's table: what defines it, what it runs with, what it
// yields, and its processes. Shared by the bench's own rows (migrate.ts) and its peers'
// (peers/).

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { MiB } from "./constants.ts";
import { type Peak, Proc } from "./proc.ts";
import type { Scenario } from "./topology.ts";

export interface RowDef {
  id: string;
  label: string;
  /** What runs the row: wanmig, or a peer (peers/). */
  kind: "wanmig" | "nbdcopy" | "qsd-mirror" | "iperf3";
  mode?: "live" | "freeze-and-copy";
  deltas?: "coalesce" | "paper";
  /** --compress for this row (else the bench's --compress, else the product's default). */
  compress?: string;
  /** How the ends trust each other: --tls with certificates, or --insecure (frames in the clear); else --secret-file (sealed frames). */
  auth?: "tls" | "insecure";
  /** The same image as two disks of one VM (its halves, each its own file): what a second disk costs. */
  twoDisks?: boolean;
  /** iperf3: one TCP stream, or the bench's --iperf-streams. */
  streams?: "one" | "many";
}

export interface RowResult {
  scenario: string;
  row: string;
  label: string;
  ok: boolean;
  error?: string;
  exitCode?: number;
  migrationTimeS?: number;
  downtimeMs?: number;
  wireBytes?: number;
  bulkWireBytes?: number;
  linkTxBytes?: number;
  /** TCP connections wanmig used (its DONE says how many --streams opened). */
  streams?: number;
  /** The image's data over the migration time (bits per second); iperf3's own figure. */
  throughputBps?: number;
  deltas?: number;
  deltasSkipped?: number;
  finalDeltas?: number;
  throttleSteps?: number;
  reconnects?: number;
  identical?: boolean;
  done?: Record<string, number>;
  phases?: Record<string, number>;
  rss: Record<string, Peak>;
  workload?: Record<string, unknown>;
  notes: string[];
  /** 1-minute load average before → after the row. */
  load?: string;
}

export interface Ctx {
  /** The current scenario's image (its kind is the scenario's). */
  image: string;
  imageMiB: number;
  dataMiB: number;
  /** The bytes of data in the image (its extents), what a row's throughput counts. */
  dataBytes: number;
  secret: string;
  /** The --tls flags for each end, when a row uses TLS. */
  tls?: { source: string[]; dest: string[] };
  /** The source's --streams (empty: not passed). */
  streams: string;
  iperfStreams: number;
  iperfSeconds: number;
  timeoutS?: number;
  port: number;
  /** Write each process's stderr here. */
  logDir?: string;
  /** The source's --compress (unset: the product's default). */
  compress?: string;
}

/** The processes of one row: started in order, stopped in reverse, their logs and peak RSS kept. */
export class RowProcs {
  readonly all: Proc[] = [];

  start(name: string, ns: string, argv: string[], rss = false): Proc {
    const p = new Proc(name, ns, argv, rss);
    this.all.push(p);
    return p;
  }

  async finish(ctx: Ctx, sc: Scenario, row: RowDef, r: RowResult): Promise<void> {
    for (const p of [...this.all].reverse()) await p.stop();
    keepLogs(ctx, sc, row, this.all);
    for (const p of this.all) if (p.watchRss) r.rss[p.name] = p.peak;
  }

  /**
   * Runs a row's body: a failure becomes the row's error (the table shows it, the next row
   * runs), and the row's processes are stopped, their logs and peak RSS kept, whatever happens.
   */
  async guard(ctx: Ctx, sc: Scenario, row: RowDef, r: RowResult, body: () => Promise<void>): Promise<RowResult> {
    try {
      await body();
    } catch (err) {
      r.error = (err as Error).message;
    } finally {
      await this.finish(ctx, sc, row, r);
    }
    return r;
  }
}

/** A row's last word: ok only if every destination image is the source's. */
export function judgeIdentical(r: RowResult, same: boolean[]): void {
  r.identical = same.every(Boolean);
  r.ok = r.identical;
  if (!r.identical) r.error = "the images differ";
}

export function keepLogs(ctx: Ctx, sc: Scenario, row: RowDef, procs: Proc[]): void {
  if (!ctx.logDir) return;
  mkdirSync(ctx.logDir, { recursive: true });
  for (const p of procs) {
    writeFileSync(join(ctx.logDir, `${sc.name}-${row.id}-${p.name}.log`), p.stderr);
    if (p.stdoutLines.length) writeFileSync(join(ctx.logDir, `${sc.name}-${row.id}-${p.name}.out`), p.stdoutLines.map(({ t, line }) => `${t.toFixed(0)} ${line}\n`).join(""));
  }
}

export function timeoutMs(sc: Scenario, ctx: Ctx): number {
  if (ctx.timeoutS) return ctx.timeoutS * 1000;
  return 120_000 + (sc.bps ? 4 * ((ctx.dataMiB * MiB * 8) / sc.bps) * 1000 : 0);
}
