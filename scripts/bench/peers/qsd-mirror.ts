// The peer for a live migration: QEMU's own. qemu-storage-daemon exports the disk (the VM's
// writer talks to it) and blockdev-mirrors it to qemu-nbd at the destination, over TCP on
// the scenario's path (the veth, or the link emulator); at READY the writer pauses (the VM pauses) and
// block-job-cancel finishes the copy. Used by the downtime and migrate benches.

import { $ } from "bun";
import { join } from "node:path";
import { QmpClient } from "../../../src/hypervisor/qmp.ts";
import { logger } from "../../../src/log.ts";
import { identical } from "../lib/images.ts";
import { Proc } from "../lib/proc.ts";
import { NS_DST, NS_SRC, pathOf, rowHosts, type Scenario } from "../lib/topology.ts";
import { waitUntil } from "../lib/wait.ts";

export interface MirrorOptions {
  sc: Scenario;
  /** This row's directory; the image template is copied into it (rowHosts). */
  dir: string;
  template: string;
  sizeBytes: number;
  nextPort: () => number;
  timeoutMs: number;
  copyMode: "background" | "write-blocking";
  /** The VM's writer on the source's run directory, if any (started 1 s before the mirror). */
  writer?: (runDir: string) => Proc | undefined;
}

export interface MirrorRun {
  ok: boolean;
  error?: string;
  /** The writer's pause to the job's end. */
  downtimeMs?: number;
  /** The mirror's start to its end. */
  migrationS?: number;
  t0?: number;
  pausedAt?: number;
  /** The writer (stopped), for its samples. */
  vm?: Proc;
  /** Every process of the row (stopped), for peak RSS and logs. */
  procs: Proc[];
}

export async function mirrorRow(o: MirrorOptions): Promise<MirrorRun> {
  const r: MirrorRun = { ok: false, procs: [] };
  const { a, b, image } = await rowHosts(o.dir, o.template);
  const target = join(b, "vm.img");
  await $`truncate -s ${o.sizeBytes} ${target}`;
  const procs = r.procs;
  let qmp: QmpClient | undefined;
  try {
    const port = o.nextPort();
    // On the scenario's path: the veth, or the link emulator's end at the destination.
    const host = pathOf(o.sc).dst;
    const nbd = new Proc("qemu-nbd", NS_DST, ["qemu-nbd", "-f", "raw", "-x", "vm", "-b", host, "-p", String(port), "--persistent", "--cache=writeback", target], true);
    procs.push(nbd);
    const qmpPath = join(a, "qsd.qmp");
    const qsd = new Proc("qsd", NS_SRC, [
      "qemu-storage-daemon",
      "--blockdev", `driver=file,filename=${image},node-name=file0,cache.direct=off`,
      "--blockdev", "driver=raw,file=file0,node-name=disk",
      "--nbd-server", `addr.type=unix,addr.path=${join(a, "vm.nbd")}`,
      "--export", "type=nbd,id=e0,node-name=disk,name=,writable=on",
      "--chardev", `socket,path=${qmpPath},server=on,wait=off,id=qmp0`,
      "--monitor", "chardev=qmp0",
    ], true);
    procs.push(qsd);
    await waitUntil(async () => {
      qmp = await QmpClient.connect(qmpPath, logger("bench-qmp"));
      return true;
    }, "qemu-storage-daemon's QMP");
    const q = qmp!;
    const vm = o.writer?.(a);
    if (vm) procs.push(vm);
    r.vm = vm;
    await Bun.sleep(1000);
    const t0 = performance.now();
    r.t0 = t0;
    await q.execute("blockdev-add", { driver: "nbd", "node-name": "target", server: { type: "inet", host, port: String(port) }, export: "vm" });
    await q.execute("blockdev-mirror", { "job-id": "m0", device: "disk", target: "target", sync: "full", "copy-mode": o.copyMode });
    // A QMP call that never answers (qsd stuck in a drain) must fail the row, not hang the bench.
    const timed = <T>(p: Promise<T>): Promise<T> => Promise.race([p, Bun.sleep(30_000).then(() => Promise.reject(new Error("qemu-storage-daemon stopped answering QMP")))]);
    const job = async () => (await timed(q.execute<{ device: string; ready: boolean; status: string }[]>("query-block-jobs"))).find((j) => j.device === "m0");
    await waitUntil(async () => (await job())?.ready === true, "the mirror to be ready", o.timeoutMs);
    // The VM pauses: the writer stops with nothing in flight (a SIGSTOP could leave a write
    // half sent, and the mirror's drain would wait for it for ever).
    // Its downtime counts from when the writer stopped (a writer asleep between its
    // operations, as static-web's 100 ms, answers late), as wanmig's from its fence.
    let pausedAt = performance.now();
    if (vm) {
      vm.proc.kill("SIGUSR1");
      await waitUntil(async () => vm.stdoutLines.some((l) => l.line.includes('"paused"')), "the writer to pause", 10_000);
      pausedAt = vm.stdoutLines.find((l) => l.line.includes('"paused"'))!.t;
    }
    r.pausedAt = pausedAt;
    await timed(q.execute("block-job-cancel", { device: "m0" })); // after READY: finish the copy, keep the source
    // Polled every 2 ms (a QMP round trip here is ~0.2 ms): the 50 ms of waitUntil would add to its downtime.
    const endBy = performance.now() + o.timeoutMs;
    while ((await job()) !== undefined) {
      if (performance.now() > endBy) throw new Error("the mirror did not end");
      await Bun.sleep(2);
    }
    const endedAt = performance.now();
    r.downtimeMs = Math.round(endedAt - pausedAt);
    r.migrationS = (endedAt - t0) / 1000;
    if (vm) {
      vm.proc.kill("SIGKILL");
      await vm.proc.exited;
    }
    await q.execute("quit").catch(() => undefined);
    await qsd.proc.exited;
    await nbd.stop();
    r.ok = await identical(image, target);
    if (!r.ok) r.error = "the images differ";
    return r;
  } catch (err) {
    r.error = (err as Error).message;
    return r;
  } finally {
    qmp?.close();
    for (const p of [...procs].reverse()) await p.stop();
  }
}
