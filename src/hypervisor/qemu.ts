// QEMU through QMP. Source: pause-before-switchover, so QEMU stops the VM (and flushes
// its writes to our serve) and then waits for us in state "pre-switchover"; the disk is
// handed over in that pause; migrate-continue sends the last device state, and only then
// can the destination run the VM (the point of no return). Destination: QEMU with
// -incoming; the source reports "completed" before the destination has loaded the state,
// so we watch the destination itself until it runs.

import type { Logger } from "../log.ts";
import { HypervisorError } from "./errors.ts";
import { QmpClient, type QmpEvent } from "./qmp.ts";
import type { DestHypervisor, MoveMemoryOptions, SourceHypervisor } from "./types.ts";
import { holdPoint } from "../util/kill-point.ts";
import { endPrecopyLimit, precopyProgress } from "./memory-convergence.ts";
import { linkWantsXbzrle, xbzrlePlan } from "./memory-xbzrle.ts";

const POLL_MS = 50;
/**
 * The downtime-limit that holds a pause back. QEMU pauses the VM once the memory left fits
 * bandwidth x downtime-limit (migration_iteration_run); at 1 ms a running guest's newly
 * dirtied pages never fit, so it keeps copying. Not 0: then a round that finds no dirty
 * page at all would not resync the bitmap and would complete at once.
 */
const PAUSE_HOLD_LIMIT_MS = 1;
const QEMU_DEFAULT_LIMIT_MS = 300;
const MIGRATION_TIMEOUT_MS = 60 * 60 * 1000;
/** How long a destination QEMU that does not listen yet is waited for. */
const LISTEN_WAIT_MS = 60_000;

interface MigrateInfo {
  status?: string;
  "error-desc"?: string;
  ram?: { "dirty-sync-count"?: number; remaining?: number; mbps?: number; transferred?: number };
  "xbzrle-cache"?: { bytes?: number; pages?: number; "cache-miss-rate"?: number; "encoding-rate"?: number };
}

/** QEMU's event timestamps are wall-clock; map one onto performance.now(). */
function eventInstant(e: QmpEvent): number {
  if (!e.timestamp) return performance.now();
  const wallMs = e.timestamp.seconds * 1000 + e.timestamp.microseconds / 1000;
  return performance.now() - (Date.now() - wallMs);
}

export class QemuSource implements SourceHypervisor {
  readonly kind = "qemu" as const;
  readonly pointOfNoReturn = "complete" as const;
  private qmp?: QmpClient;
  private stoppedAt?: number;
  private onStopped?: () => void;
  private downtimeLimitMs = 300;
  /** The VM's own downtime-limit, put back when a migration of ours does not complete. */
  private ownLimitMs = 300;
  private pauseHeld = false;
  /** XBZRLE turned on by us (sendLessOnSlowLinks): turned off again if the VM stays here. */
  private xbzrleOn = false;

  constructor(
    private readonly opts: { qmp: string; migrateUri: string; xbzrle?: boolean },
    private readonly log: Logger,
  ) {}

  async prepare(): Promise<void> {
    this.qmp = await QmpClient.connect(this.opts.qmp, this.log);
    const st = await this.qmp.execute<{ status: string }>("query-status");
    if (st.status !== "running") throw new HypervisorError(`the source VM is ${st.status}, not running`);
    const mig = await this.qmp.execute<MigrateInfo>("query-migrate");
    if (mig.status && !["completed", "failed", "cancelled", "none"].includes(mig.status))
      throw new HypervisorError(`a migration of this VM is already ${mig.status}`);
    // Not auto-converge (off by default in QEMU and libvirt too). Tried on the paper bench's
    // Bonnie rows: with it, the guest crashed at B in 2 of 2 (its RAM, likely the TCG race the
    // docs/benchmarks.md describes, which throttled vCPU threads widen); without it the same row
    // converged, our disk throttle slowing the writer, and the guest ran on.
    await this.qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "pause-before-switchover", state: true }] });
    this.qmp.onEvent((e) => {
      if (e.event !== "STOP") return;
      this.stoppedAt = eventInstant(e);
      this.onStopped?.();
      this.onStopped = undefined;
    });
    this.downtimeLimitMs = (await this.qmp.execute<{ "downtime-limit"?: number }>("query-migrate-parameters"))["downtime-limit"] ?? QEMU_DEFAULT_LIMIT_MS;
    if (this.downtimeLimitMs === PAUSE_HOLD_LIMIT_MS) {
      // A source of ours killed while it held the pause back left it so; no operator sets 1 ms.
      this.log.warn(`QEMU's downtime-limit is ${PAUSE_HOLD_LIMIT_MS} ms, as a killed migration holding the pause back left it: using QEMU's default ${QEMU_DEFAULT_LIMIT_MS} ms`);
      this.downtimeLimitMs = QEMU_DEFAULT_LIMIT_MS;
      await this.qmp.execute("migrate-set-parameters", { "downtime-limit": QEMU_DEFAULT_LIMIT_MS });
    }
    this.ownLimitMs = this.downtimeLimitMs;
  }

  /** Holds QEMU's pause back, or lets it pause once its memory fits the limit in force (PAUSE_HOLD_LIMIT_MS). */
  async holdPause(hold: boolean): Promise<void> {
    if (hold === this.pauseHeld || !this.qmp) return;
    this.pauseHeld = hold;
    await this.qmp.execute("migrate-set-parameters", { "downtime-limit": hold ? PAUSE_HOLD_LIMIT_MS : this.downtimeLimitMs });
    this.log.info(hold ? "holding the VM's pause back: the writes it has in flight would not cross within the downtime budget" : `the VM may pause (downtime-limit ${this.downtimeLimitMs} ms again)`);
  }

  async moveMemory(whileWaiting: () => Promise<void>, opts: MoveMemoryOptions = {}): Promise<{ pausedAt: number }> {
    const qmp = this.qmp!;
    // QEMU's STOP comes before pre-switchover by as long as its block layer takes to drain
    // the VM's writes in flight: those must not wait for a throttle meant for a running VM.
    this.onStopped = opts.onStopped;
    if (opts.stopFirst) {
      // abort() lets it run again; the destination, told the source was stopped, waits for our cont.
      await qmp.execute("stop");
      this.log.info("QEMU stopped the VM at the source (freeze-and-copy); its memory moves in one pass");
    }
    const end = Date.now() + MIGRATION_TIMEOUT_MS;
    // The destination QEMU listens only once it has opened its disk, which our dest serves
    // only after the source authenticated: on a small disk we can get here first. So a
    // refused connection is retried for a while, as an operator would.
    const refusedUntil = Date.now() + LISTEN_WAIT_MS;
    let started = false;
    let sentAny = false; // a byte of memory went: the destination has begun, a failure is not "not listening yet"
    if (!opts.stopFirst && this.opts.xbzrle) await this.sendLessOnSlowLinks(opts.linkBytesPerSec, whileWaiting);
    await qmp.execute("migrate", { uri: this.opts.migrateUri });
    this.log.info(`QEMU migrates memory to ${this.opts.migrateUri}`);
    let lastPoll = 0;
    for (;;) {
      await whileWaiting();
      if (Date.now() - lastPoll < POLL_MS) {
        await Bun.sleep(5);
        continue;
      }
      lastPoll = Date.now();
      const m = await qmp.execute<MigrateInfo>("query-migrate");
      if (m.status === "active" && !started) {
        started = true;
        this.log.info("QEMU memory migration under way");
      }
      if (m.status === "active") await this.endPrecopyIfStuck(m);
      if (m.status === "pre-switchover") {
        this.log.info("QEMU paused the VM at the source (pre-switchover); its writes are flushed");
        const x = m["xbzrle-cache"];
        if (this.xbzrleOn && x) this.log.info(`XBZRLE sent ${x.pages ?? 0} pages as ${((x.bytes ?? 0) / 1048576).toFixed(1)} MiB of changes (cache misses ${(((x["cache-miss-rate"] ?? 0) * 100)).toFixed(0)} %, encoding rate ${(x["encoding-rate"] ?? 0).toFixed(1)})`);
        return { pausedAt: this.stoppedAt ?? performance.now() };
      }
      // Through a relay (a delay proxy, an SSH forward) the connection is taken and then
      // dropped, not refused: a failure before any byte of memory went is retried the same way.
      if ((m.ram?.transferred ?? 0) > 0) sentAny = true;
      if (m.status === "failed" && !sentAny && /Connection refused|Broken pipe|Connection reset/i.test(m["error-desc"] ?? "") && Date.now() < refusedUntil) {
        await Bun.sleep(250);
        await qmp.execute("migrate", { uri: this.opts.migrateUri });
        continue;
      }
      if (m.status === "failed" || m.status === "cancelled")
        throw new HypervisorError(`QEMU's memory migration ${m.status}${m["error-desc"] ? `: ${m["error-desc"]}` : ""}`);
      if (Date.now() > end) throw new HypervisorError("QEMU's memory migration did not reach pre-switchover in time");
    }
  }

  /**
   * A slow link: XBZRLE, its cache sized from the guest's dirty rate (memory-xbzrle.ts).
   * QEMU measures that rate by sampling pages for a second (calc-dirty-rate), while the
   * deltas go on streaming.
   */
  private async sendLessOnSlowLinks(linkBytesPerSec: number | undefined, whileWaiting: () => Promise<void>): Promise<void> {
    const qmp = this.qmp!;
    if (!linkWantsXbzrle(linkBytesPerSec)) return;
    const ramBytes = (await qmp.execute<{ "base-memory": number }>("query-memory-size-summary"))["base-memory"];
    const dirtyBytesPerSec = await this.dirtyRate(whileWaiting).catch((err) => {
      this.log.info(`QEMU's dirty rate could not be measured (${(err as Error).message}): the XBZRLE cache is sized from the guest's RAM`);
      return undefined;
    });
    const plan = xbzrlePlan({ bytesPerSec: linkBytesPerSec }, { ramBytes, dirtyBytesPerSec })!;
    await qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "xbzrle", state: true }] });
    await qmp.execute("migrate-set-parameters", { "xbzrle-cache-size": plan.cacheBytes });
    this.xbzrleOn = true;
    this.log.info(plan.why);
  }

  private async dirtyRate(whileWaiting: () => Promise<void>): Promise<number | undefined> {
    const qmp = this.qmp!;
    await qmp.execute("calc-dirty-rate", { "calc-time": 1 });
    const end = Date.now() + 5000;
    while (Date.now() < end) {
      await whileWaiting();
      await Bun.sleep(20);
      const r = await qmp.execute<{ status: string; "dirty-rate"?: number }>("query-dirty-rate");
      if (r.status === "measured" && r["dirty-rate"] !== undefined) return r["dirty-rate"] * 1024 * 1024; // MB/s in QEMU's words, MiB/s in its code
    }
    return undefined;
  }

  /** Pre-copy that had its rounds and still does not fit: QEMU stops the VM and copies the rest (memory-convergence.ts). */
  private async endPrecopyIfStuck(m: MigrateInfo): Promise<void> {
    if (this.pauseHeld) return; // judged again once the pause may come
    const p = precopyProgress(m, this.downtimeLimitMs);
    const limit = p && endPrecopyLimit(p);
    if (limit === undefined) return;
    await this.qmp!.execute("migrate-set-parameters", { "downtime-limit": limit });
    this.downtimeLimitMs = limit;
    this.log.warn(
      `QEMU's memory copy has not converged after ${p!.rounds} rounds (${(p!.remainingBytes / 1048576).toFixed(1)} MiB dirty, ${(p!.bytesPerMs * 8 / 1000).toFixed(1)} Mbit/s): ` +
        `ending it, as Xen does, with the VM stopped for the rest (downtime limit raised to ${(limit / 1000).toFixed(1)} s)`,
    );
  }

  async complete(): Promise<void> {
    const qmp = this.qmp!;
    await qmp.execute("migrate-continue", { state: "pre-switchover" });
    const end = Date.now() + MIGRATION_TIMEOUT_MS;
    for (;;) {
      const m = await qmp.execute<MigrateInfo>("query-migrate");
      if (m.status === "completed") return;
      if (m.status === "failed" || m.status === "cancelled")
        throw new HypervisorError(`QEMU's migration ${m.status} after migrate-continue${m["error-desc"] ? `: ${m["error-desc"]}` : ""}`);
      if (Date.now() > end) throw new HypervisorError("QEMU's migration did not complete in time");
      await Bun.sleep(POLL_MS);
    }
  }

  /** pre-switchover: paused here, either way is open; completed: the state has gone. */
  async recoverState(): Promise<"can-roll-back" | "must-complete" | "runs-here"> {
    this.qmp ??= await QmpClient.connect(this.opts.qmp, this.log);
    const m = await this.qmp.execute<MigrateInfo>("query-migrate");
    if (m.status === "completed") return "must-complete";
    if (m.status === "pre-switchover" || m.status === "device") return "can-roll-back";
    const st = await this.qmp.execute<{ status: string }>("query-status");
    return st.status === "running" ? "runs-here" : "can-roll-back";
  }

  /** Cancels the migration and makes sure the VM runs here again (cont): never stranded. */
  async abort(): Promise<undefined> {
    const qmp = this.qmp;
    if (!qmp) return;
    const m = await qmp.execute<MigrateInfo>("query-migrate");
    if (m.status && !["completed", "failed", "cancelled", "none"].includes(m.status)) {
      await qmp.execute("migrate_cancel");
      for (let i = 0; i < 200; i++) {
        const s = (await qmp.execute<MigrateInfo>("query-migrate")).status;
        if (s === "cancelled" || s === "failed") break;
        await Bun.sleep(POLL_MS);
      }
    }
    // A held pause or an ended pre-copy changed the VM's downtime-limit: its next migration gets its own back.
    if (this.pauseHeld || this.downtimeLimitMs !== this.ownLimitMs) {
      await qmp.execute("migrate-set-parameters", { "downtime-limit": this.ownLimitMs });
      this.pauseHeld = false;
      this.downtimeLimitMs = this.ownLimitMs;
    }
    if (this.xbzrleOn) {
      await qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "xbzrle", state: false }] });
      this.xbzrleOn = false;
    }
    const st = await qmp.execute<{ status: string }>("query-status");
    if (st.status !== "running") await qmp.execute("cont");
    this.log.info("QEMU migration cancelled; the VM runs at the source");
  }

  close(): void {
    this.qmp?.close();
  }
}

export class QemuDest implements DestHypervisor {
  readonly kind = "qemu" as const;
  readonly readsBeforeRelease = true; // QEMU waiting with -incoming reads its disk at start-up

  constructor(
    private readonly opts: { qmp: string },
    private readonly log: Logger,
  ) {}

  async release(): Promise<{ runningAt: number }> {
    const qmp = await QmpClient.connect(this.opts.qmp, this.log);
    let resumedAt: number | undefined;
    qmp.onEvent((e) => {
      if (e.event === "RESUME" && e.timestamp) resumedAt = e.timestamp.seconds * 1000 + e.timestamp.microseconds / 1000;
    });
    try {
      const end = Date.now() + MIGRATION_TIMEOUT_MS;
      for (;;) {
        const st = await qmp.execute<{ status: string }>("query-status");
        // QEMU's RESUME event has the instant when we saw it; else the poll that found it running.
        if (st.status === "running") return { runningAt: resumedAt ?? Date.now() };
        // Started with -S: the incoming migration is done, the start is ours to give.
        if (st.status === "paused" && (await qmp.execute<MigrateInfo>("query-migrate")).status === "completed") {
          await holdPoint("dest-cont");
          await qmp.execute("cont");
        }
        if (Date.now() > end) throw new HypervisorError(`the destination VM is still ${st.status}`);
        await Bun.sleep(POLL_MS);
      }
    } finally {
      qmp.close();
    }
  }

  close(): void {}
}
