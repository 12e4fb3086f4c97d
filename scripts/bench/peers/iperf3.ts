// The path's ceiling: iperf3 from the source's host to the destination's, over the same
// path the migration takes, with one TCP stream (what one connection can reach on it, its
// window over the round trip) and with several (what the link itself carries). A row of
// the migrate bench; its figure is iperf3's received rate over the whole test, slow start
// included, as a migration's would be.

import { $ } from "bun";
import { type Ctx, type RowDef, RowProcs, type RowResult } from "../lib/migrate-row.ts";
import { tail } from "../lib/proc.ts";
import { linkTxBytes, NS_DST, NS_SRC, pathOf, type Scenario } from "../lib/topology.ts";
import { waitUntil } from "../lib/wait.ts";

export async function runIperf3(sc: Scenario, row: RowDef, ctx: Ctx): Promise<RowResult> {
  const streams = row.streams === "many" ? ctx.iperfStreams : 1;
  const label = `iperf3, ${streams} TCP stream${streams > 1 ? "s" : ""} (the path's ceiling)`;
  const r: RowResult = { scenario: sc.name, row: row.id, label, ok: false, rss: {}, notes: [] };
  const procs = new RowProcs();
  const { src, dst } = pathOf(sc);
  return procs.guard(ctx, sc, row, r, async () => {
    const port = String(ctx.port++);
    const server = procs.start("iperf3-server", NS_DST, ["iperf3", "-s", "-1", "-B", dst, "-p", port]);
    // Its stdout is block-buffered into a pipe: its listening socket says it is up.
    await waitUntil(async () => server.proc.exitCode === null && (await $`ip netns exec ${NS_DST} ss -Hltn ${`sport = :${port}`}`.quiet().text()).trim() !== "", "iperf3's server", 10_000);
    const tx0 = await linkTxBytes(sc);
    const client = procs.start("iperf3", NS_SRC, ["iperf3", "-c", dst, "-B", src, "-p", port, "-t", String(ctx.iperfSeconds), "-P", String(streams), "-J"]);
    const timer = setTimeout(() => client.proc.kill("SIGTERM"), (ctx.iperfSeconds + 60) * 1000);
    const code = await client.proc.exited;
    clearTimeout(timer);
    await Bun.sleep(200); // the last stdout lines
    r.linkTxBytes = (await linkTxBytes(sc)) - tx0;
    r.exitCode = code;
    const out = JSON.parse(client.stdoutLines.map((l) => l.line).join("\n") || "{}");
    const bps = out.end?.sum_received?.bits_per_second;
    if (code !== 0 || typeof bps !== "number") {
      r.error = `iperf3 exited ${code}${out.error ? `: ${out.error}` : ""}`;
      r.notes.push(`iperf3 stderr:\n${tail(client.stderr)}`);
      return;
    }
    r.throughputBps = bps;
    r.ok = true;
  });
}
