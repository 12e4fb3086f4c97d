// Whose fault is a real guest's failure? (issue 11)
//
// QEMU 7.2's TCG memory migration now and then loses a page of guest RAM under CPU
// starvation, with or without wanmig in the path (docs/benchmarks.md, "Guest RAM at the switchover").
// A guest that resumes with a stale page may oops, hang, or write nonsense; that must not be
// blamed on wanmig, and it must not hide a fault that is wanmig's. So every real-VM test:
//   - holds the destination QEMU (-S, and the dest's hold point before its `cont`) once QEMU
//     reports the migration completed, dumps all guest RAM on both sides (pmemsave) and
//     compares them, then lets it run;
//   - wraps the checks of wanmig's own work in ours() (the disk holds every write, the
//     hand-off's outcome, the fence): those fail at once, whatever the RAM did;
//   - runs in retryOnQemuRamLoss(): a run whose RAM differed is QEMU's, reported as such
//     and retried once; a second one in a row fails (at the rate measured, ~3 % under four
//     CPU hogs, twice in a row points at something else).
import { closeSync, mkdirSync, openSync, readSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { QmpClient } from "../../src/hypervisor/qmp.ts";
import type { Guest } from "./guest.ts";

const PAGE = 4096;

/** Pages (by guest-physical address) whose bytes differ between two RAM dumps. */
export function differingPages(a: string, b: string, size: number): number[] {
  const fa = openSync(a, "r");
  const fb = openSync(b, "r");
  const ba = Buffer.alloc(1 << 20);
  const bb = Buffer.alloc(1 << 20);
  const out: number[] = [];
  try {
    for (let at = 0; at < size; at += ba.length) {
      readSync(fa, ba, 0, ba.length, at);
      readSync(fb, bb, 0, bb.length, at);
      if (ba.equals(bb)) continue;
      for (let p = 0; p < ba.length; p += PAGE) if (!ba.subarray(p, p + PAGE).equals(bb.subarray(p, p + PAGE))) out.push(at + p);
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  return out;
}

export async function migrationStatus(q: QmpClient): Promise<string | undefined> {
  return (await q.execute<{ status?: string }>("query-migrate")).status;
}

export async function waitMigrationCompleted(q: QmpClient, what: string, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const m = await q.execute<{ status?: string; "error-desc"?: string }>("query-migrate");
    const s = m.status;
    if (s === "completed") return;
    // A destination not listening yet is retried by wanmig's source: not an end.
    if (s === "cancelled" || (s === "failed" && !/Connection refused/i.test(m["error-desc"] ?? ""))) throw new Error(`${what}: QEMU's migration ${s}${m["error-desc"] ? `: ${m["error-desc"]}` : ""}`);
    if (Date.now() > end) throw new Error(`${what}: QEMU's migration still ${s} after ${timeoutMs} ms`);
    await Bun.sleep(20);
  }
}

/** Dumps all guest RAM on both stopped sides and compares it page by page; `keep` sees the dumps first. */
export async function compareRam(srcQmp: QmpClient, dstQmp: QmpClient, dir: string, ramBytes: number, keep?: (src: string, dst: string, pages: number[]) => void): Promise<number[]> {
  const src = join(dir, "src.ram");
  const dst = join(dir, "dst.ram");
  try {
    await srcQmp.execute("pmemsave", { val: 0, size: ramBytes, filename: src });
    await dstQmp.execute("pmemsave", { val: 0, size: ramBytes, filename: dst });
    const pages = differingPages(src, dst, ramBytes);
    if (pages.length) keep?.(src, dst, pages);
    return pages;
  } finally {
    rmSync(src, { force: true });
    rmSync(dst, { force: true });
  }
}

/** A QEMU just spawned has no monitor socket yet. */
async function whenUp(connect: () => Promise<QmpClient>, timeoutMs = 60_000): Promise<QmpClient> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await connect();
    } catch (err) {
      if (Date.now() > end) throw err;
      await Bun.sleep(50);
    }
  }
}

export interface RamVerdict {
  pagesDiffering: number;
  firstPages: string[];
  /** How long the destination was held for the dumps (it adds to any downtime measured). */
  heldMs: number;
}

/**
 * Waits until QEMU reports the migration completed on both sides (QMP monitors of the
 * test's own), compares guest RAM, then creates `release` (the dest's WANMIG_TEST_HOLD_AT
 * file), whatever happened. The destination QEMU must have been started held (-S).
 */
export async function holdAndCompare(
  qmp: { src: () => Promise<QmpClient>; dst: () => Promise<QmpClient> },
  opts: { dir: string; ramBytes: number; release?: string; timeoutMs?: number; keep?: (src: string, dst: string, pages: number[]) => void },
): Promise<RamVerdict> {
  let s: QmpClient | undefined;
  let d: QmpClient | undefined;
  try {
    s = await whenUp(qmp.src);
    d = await whenUp(qmp.dst);
    await waitMigrationCompleted(s, "source", opts.timeoutMs ?? 180_000);
    await waitMigrationCompleted(d, "destination", opts.timeoutMs ?? 180_000);
    const t0 = performance.now();
    const pages = await compareRam(s, d, opts.dir, opts.ramBytes, opts.keep);
    return { pagesDiffering: pages.length, firstPages: pages.slice(0, 8).map((p) => `0x${p.toString(16)}`), heldMs: Math.round(performance.now() - t0) };
  } finally {
    if (opts.release) await Bun.write(opts.release, "");
    s?.close();
    d?.close();
  }
}

/** holdAndCompare for two test guests; records the verdict on `attempt`. */
export async function ramAtSwitchover(attempt: Attempt, src: Guest, dst: Guest, release: string): Promise<RamVerdict> {
  attempt.ram = await holdAndCompare({ src: () => src.testQmp(), dst: () => dst.testQmp() }, { dir: attempt.dir, ramBytes: src.ramBytes, release });
  return attempt.ram;
}

/** A failed check of wanmig's own work: its fault, whatever guest RAM did. */
export class OurCheckFailed extends Error {}

/** Runs a check of wanmig's own work (the disk, the hand-off); its failure is never put down to QEMU. */
export async function ours<T>(check: () => T | Promise<T>): Promise<T> {
  try {
    return await check();
  } catch (err) {
    throw new OurCheckFailed(`wanmig's check failed (not QEMU's RAM loss): ${(err as Error).message ?? err}`, { cause: err });
  }
}

/** One run of a real-VM scenario: its directory, its RAM verdict, what to stop after it. */
export class Attempt {
  ram?: RamVerdict;
  private readonly cleanups: (() => unknown)[] = [];

  constructor(
    readonly n: number,
    readonly dir: string,
  ) {
    mkdirSync(dir, { recursive: true });
  }

  defer(cleanup: () => unknown): void {
    this.cleanups.push(cleanup);
  }

  async close(): Promise<void> {
    for (const c of this.cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
  }
}

/**
 * Runs `body`; a run whose guest RAM differed at the switchover is QEMU's, so it is
 * reported and run once more. A failed disk check fails at once; any other failure in a
 * run whose RAM was equal fails at once too.
 */
export async function retryOnQemuRamLoss(what: string, dirOf: (n: number) => string, body: (attempt: Attempt) => Promise<void>): Promise<void> {
  for (let n = 1; ; n++) {
    const attempt = new Attempt(n, dirOf(n));
    let failure: unknown;
    try {
      await body(attempt);
    } catch (err) {
      failure = err;
    } finally {
      await attempt.close();
    }
    const ram = attempt.ram;
    if (!ram?.pagesDiffering || failure instanceof OurCheckFailed) {
      if (failure) throw failure;
      return;
    }
    const why = failure ? `; the run then failed: ${String((failure as Error).message ?? failure).split("\n")[0]}` : "";
    const report = `${what}: guest RAM differed between source and destination at the switchover, in ${ram.pagesDiffering} pages (${ram.firstPages.join(" ")}): QEMU's memory migration lost them, not wanmig${why}`;
    if (n >= 2) throw new Error(`${report}; twice in a row, so not put down to QEMU's known loss`);
    console.warn(`${report}; running it once more`);
  }
}
