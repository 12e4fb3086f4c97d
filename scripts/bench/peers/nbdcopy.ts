// The peer for a migration that is not live: a plain copy of the stopped VM's disk, pulled
// by nbdcopy (at the destination) from qemu-nbd (at the source), over the bench's link (and
// delay proxy). A row of the migrate bench.

import { $ } from "bun";
import { join } from "node:path";
import { type Ctx, type RowDef, RowProcs, type RowResult, timeoutMs } from "../lib/migrate-row.ts";
import { identical } from "../lib/images.ts";
import { tail } from "../lib/proc.ts";
import { linkTxBytes, NS_DST, NS_SRC, proxyArgs, type Scenario, SRC_IP } from "../lib/topology.ts";
import { waitUntil } from "../lib/wait.ts";

/** The peer: a plain copy of the stopped VM's disk, pulled by nbdcopy from qemu-nbd. */
export async function runNbdcopy(sc: Scenario, row: RowDef, ctx: Ctx, dir: string): Promise<RowResult> {
  const r: RowResult = { scenario: sc.name, row: row.id, label: row.label, ok: false, rss: {}, notes: [] };
  const image = join(dir, "src.img");
  const out = join(dir, "dst.img");
  await $`cp --sparse=always ${ctx.image} ${image}`;
  await $`sync`; // as rowHosts
  const procs = new RowProcs();
  const start = procs.start.bind(procs);
  try {
    const qport = ctx.port++;
    const bind = sc.rttMs > 0 ? "127.0.0.1" : SRC_IP;
    const qemu = start("qemu-nbd", NS_SRC, ["qemu-nbd", "-f", "raw", "-r", "-t", "-e", "16", "-b", bind, "-p", String(qport), image], true);
    await waitUntil(async () => (await $`ip netns exec ${NS_SRC} nbdinfo --size nbd://${bind}:${qport}`.nothrow().quiet()).exitCode === 0, "qemu-nbd");
    await qemu.checkPid("qemu-nbd");
    let uri = `nbd://${bind}:${qport}`;
    const proxy = sc.rttMs > 0 ? start("delay-proxy", NS_SRC, proxyArgs(sc, `${SRC_IP}:${ctx.port}`, `127.0.0.1:${qport}`)) : undefined;
    if (proxy) {
      await proxy.waitFor(/listening on/, "the delay proxy");
      uri = `nbd://${SRC_IP}:${ctx.port++}`;
    }
    const tx0 = await linkTxBytes();
    const t0 = performance.now();
    // --flush: a migration must leave the data durable at the destination (ours syncs before the hand-off).
    const copy = start("nbdcopy", NS_DST, ["nbdcopy", "--flush", uri, out], true);
    const limit = timeoutMs(sc, ctx);
    await copy.checkPid("nbdcopy");
    const timer = setTimeout(() => copy.proc.kill("SIGTERM"), limit);
    const code = await copy.proc.exited;
    clearTimeout(timer);
    const secs = (performance.now() - t0) / 1000;
    r.linkTxBytes = (await linkTxBytes()) - tx0;
    r.exitCode = code;
    if (code !== 0) {
      r.error = `nbdcopy exited ${code}`;
      r.notes.push(`nbdcopy stderr:\n${tail(copy.stderr)}`);
      return r;
    }
    r.migrationTimeS = secs;
    r.downtimeMs = secs * 1000; // not live: the VM is stopped for the whole copy
    if (proxy) {
      await Bun.sleep(300); // the relay reports each connection as nbdcopy's side closes
      await proxy.stop();
      r.wireBytes = proxy.stdoutLines.map(({ line }) => JSON.parse(line)).reduce((s, e) => s + e.up + e.down, 0);
    }
    r.identical = await identical(image, out);
    r.ok = r.identical;
    if (!r.identical) r.error = "the images differ";
    return r;
  } catch (err) {
    r.error = (err as Error).message;
    return r;
  } finally {
    await procs.finish(ctx, sc, row, r);
  }
}
