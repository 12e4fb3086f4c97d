// The peer for a migration that is not live: a plain copy of the stopped VM's disk, pulled
// by nbdcopy (at the destination, 4 connections) from qemu-nbd (at the source, read-only,
// so it offers multi-conn) over TCP on the scenario's path: the veth, or the link emulator.
// A row of the migrate bench.

import { $ } from "bun";
import { join } from "node:path";
import { type Ctx, judgeIdentical, type RowDef, RowProcs, type RowResult, timeoutMs } from "../lib/migrate-row.ts";
import { identical } from "../lib/images.ts";
import { tail } from "../lib/proc.ts";
import { linkTxBytes, NS_DST, NS_SRC, pathOf, type Scenario } from "../lib/topology.ts";
import { waitUntil } from "../lib/wait.ts";

/** nbdcopy's connections: its default, written out so the row says what it ran. */
const CONNECTIONS = 4;

/** The peer: a plain copy of the stopped VM's disk, pulled by nbdcopy from qemu-nbd. */
export async function runNbdcopy(sc: Scenario, row: RowDef, ctx: Ctx, dir: string): Promise<RowResult> {
  const r: RowResult = { scenario: sc.name, row: row.id, label: row.label, ok: false, rss: {}, notes: [] };
  const image = join(dir, "src.img");
  const out = join(dir, "dst.img");
  await $`cp --sparse=always ${ctx.image} ${image}`;
  await $`sync`; // as rowHosts
  const procs = new RowProcs();
  const start = procs.start.bind(procs);
  return procs.guard(ctx, sc, row, r, async () => {
    const qport = ctx.port++;
    const { src } = pathOf(sc);
    const uri = `nbd://${src}:${qport}`;
    const qemu = start("qemu-nbd", NS_SRC, ["qemu-nbd", "-f", "raw", "-r", "-t", "-e", "16", "-b", src, "-p", String(qport), image], true);
    await waitUntil(async () => (await $`ip netns exec ${NS_SRC} nbdinfo --size ${uri}`.nothrow().quiet()).exitCode === 0, "qemu-nbd");
    await qemu.checkPid("qemu-nbd");
    const tx0 = await linkTxBytes(sc);
    const t0 = performance.now();
    // --flush: a migration must leave the data durable at the destination (ours syncs before the hand-off).
    const copy = start("nbdcopy", NS_DST, ["nbdcopy", "--flush", "--connections", String(CONNECTIONS), uri, out], true);
    const limit = timeoutMs(sc, ctx);
    await copy.checkPid("nbdcopy");
    const timer = setTimeout(() => copy.proc.kill("SIGTERM"), limit);
    const code = await copy.proc.exited;
    clearTimeout(timer);
    const secs = (performance.now() - t0) / 1000;
    r.linkTxBytes = (await linkTxBytes(sc)) - tx0;
    r.exitCode = code;
    if (code !== 0) {
      r.error = `nbdcopy exited ${code}`;
      r.notes.push(`nbdcopy stderr:\n${tail(copy.stderr)}`);
      return;
    }
    r.migrationTimeS = secs;
    r.throughputBps = (ctx.dataBytes * 8) / secs;
    r.downtimeMs = secs * 1000; // not live: the VM is stopped for the whole copy
    judgeIdentical(r, [await identical(image, out)]);
  });
}
