// A redirect's life on one host: set up (journaled), watched until idle, torn down.
// Failures here never undo a completed migration: they are reported with the command that
// failed and the journal that lists what is left.

import type { Logger } from "../log.ts";
import { runCommand } from "../util/run.ts";
import { Journal, journalPath, RedirectError } from "./journal.ts";
import { destEnd, sourceRoute, sourceTunnel, type TunnelSpec } from "./plan.ts";

async function sysctlValue(key: string, log: Logger): Promise<string> {
  return (await runCommand(["sysctl", "-n", key], log)).stdout.trim();
}

/** Packets through the tunnel so far (both ways); undefined once the interface is gone. */
export async function tunnelPackets(iface: string, log: Logger): Promise<number | undefined> {
  try {
    const out = (await runCommand(["ip", "-j", "-s", "link", "show", "dev", iface], log)).stdout;
    const link = JSON.parse(out)[0] as { stats64?: { rx: { packets: number }; tx: { packets: number } } };
    return (link.stats64?.rx.packets ?? 0) + (link.stats64?.tx.packets ?? 0);
  } catch {
    return undefined;
  }
}

export class Redirect {
  private constructor(
    readonly spec: TunnelSpec,
    readonly journal: Journal,
    private readonly log: Logger,
  ) {}

  /** Source, before the VM pauses: forwarding on, the tunnel up; nothing routed into it yet. */
  static async source(spec: TunnelSpec, at: { runDir: string; name: string }, log: Logger): Promise<Redirect> {
    const r = new Redirect(spec, new Journal(journalPath(at.runDir, at.name), { name: at.name, role: "source" }, log), log);
    r.journal.iface = spec.iface;
    try {
      for (const c of sourceTunnel(spec, { ipForward: await sysctlValue("net.ipv4.ip_forward", log) })) await r.journal.apply(c);
    } catch (err) {
      await r.teardown().catch(() => undefined);
      throw err;
    }
    return r;
  }

  /** Source, once the VM runs at the destination: its old address into the tunnel. */
  async routeOldAddress(): Promise<void> {
    await this.journal.apply(sourceRoute(this.spec));
  }

  /** Destination, when the source asks: the tunnel's far end, delivery to the VM, the way back. */
  static async dest(spec: TunnelSpec, vmDev: string, at: { runDir: string; name: string }, log: Logger): Promise<Redirect> {
    const r = new Redirect(spec, new Journal(journalPath(at.runDir, at.name), { name: at.name, role: "dest" }, log), log);
    r.journal.iface = spec.iface;
    const current = { ipForward: await sysctlValue("net.ipv4.ip_forward", log), rpFilterAll: await sysctlValue("net.ipv4.conf.all.rp_filter", log) };
    try {
      for (const c of destEnd(spec, vmDev, current)) await r.journal.apply(c);
    } catch (err) {
      await r.teardown();
      throw err;
    }
    return r;
  }

  /**
   * Waits until the tunnel has carried no packet for `idleMs` (its counters stand still),
   * or is gone (torn down by hand), then tears this end down. Resolves with the idle
   * instant's wall-clock time (the last time a packet was seen).
   */
  async teardownWhenIdle(idleMs: number, pollMs = Math.min(1000, Math.max(100, idleMs / 10))): Promise<{ lastPacketAt: number }> {
    let last = await tunnelPackets(this.spec.iface, this.log);
    let lastChange = Date.now();
    while (last !== undefined && Date.now() - lastChange < idleMs) {
      await Bun.sleep(pollMs);
      const now = await tunnelPackets(this.spec.iface, this.log);
      if (now !== last) lastChange = Date.now();
      last = now;
    }
    await this.teardown();
    return { lastPacketAt: lastChange };
  }

  /** Undoes every change of this end; what cannot be undone stays in the journal and is reported. */
  async teardown(): Promise<void> {
    const left = await this.journal.undoAll();
    if (left.length)
      throw new RedirectError(`${left.length} network change(s) could not be undone`, { hint: `they are listed in ${this.journal.path}; retry with: wanmig redirect teardown` });
    this.log.info(`redirect torn down: ${this.spec.iface} and its routes and rules are gone`);
  }
}
