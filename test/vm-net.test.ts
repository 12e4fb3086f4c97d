// The redirect with a real VM: the guest (QEMU, TCG) has a virtio NIC on a tap device at
// each host, holds its address through the move, and a client's TCP connection to it
// (the guest's echo server) must survive the live migration, through the VXLAN tunnel.
// Guest RAM is compared at the switchover (helpers/ram-check.ts): a run where QEMU lost a
// page is QEMU's, and is run once more.
//   client ns C --veth-- host A (tap0: the guest, its disk on serve) --veth-- host B (tap0, dest, QEMU -incoming)
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { buildGuest, startGuest } from "./helpers/guest.ts";
import { ours, ramAtSwitchover, retryOnQemuRamLoss } from "./helpers/ram-check.ts";
import { type GuestHosts, guestHosts, spawnInNs, waitUntil } from "./helpers/netns.ts";
import { MAIN, REPO, secretFile, sh, sparseFile, startServe, tempDir } from "./helpers/serve-process.ts";

const dir = tempDir("wanmig-vmnet-");
let net: GuestHosts;
const procs: Subprocess[] = [];
const spawnIn = (n: string, argv: string[], what: string) => spawnInNs(n, argv, what, procs);

beforeAll(async () => {
  await buildGuest();
  net = await guestHosts("wn");
}, 300_000);

afterAll(async () => {
  for (const p of procs) p.kill("SIGKILL");
  await net?.remove();
  dir.remove();
});

describe("a real VM's open TCP connection across a live migration (--hypervisor qemu, --tunnel vxlan)", () => {
  test("the client's connection to the guest keeps exchanging data; the guest carries on at B", async () => {
    await retryOnQemuRamLoss("real VM over the redirect", (n) => join(dir.path, `run${n}`), async (at) => {
      const a = `${at.dir}-A`;
      const b = `${at.dir}-B`;
      await sh(["mkdir", "-p", a, b]);
      const image = join(a, "vm.img");
      await sparseFile(image, 64 * 1024 * 1024);
      const secret = await secretFile(`${at.dir}.secret`);
      const srv = await startServe({ image, runDir: a });
      at.defer(() => srv.stop());
      const { ns, ip, nic } = net;
      const src = startGuest({ name: "src", dir: a, nbdSocket: srv.socket, netnsExec: net.exec(ns.A), nic });
      at.defer(() => src.stop());
      await src.waitFor(/GUEST W i=1 /, 90_000);

      const client = spawnIn(ns.C, [process.execPath, join(REPO, "test", "helpers", "tcp-probe.ts"), "client", ip.guest, "7777"], "probe client");
      at.defer(() => client.proc.kill("SIGKILL"));
      await waitUntil(() => client.out().includes("connected"), "the client's connection to the guest", 30_000);
      const echoes = () => Number(/"echoes":(\d+)\}\n$/.exec(client.out())?.[1] ?? 0);
      await waitUntil(() => echoes() > 5, "echoes from the guest");
      // A client that only listens: after the move only the guest sends on its connection,
      // so nothing from the client makes B look the guest up (dest's gateway announcement must).
      const listener = spawnIn(ns.C, [process.execPath, join(REPO, "test", "helpers", "tcp-probe.ts"), "listen", ip.guest, "7778"], "listening client");
      at.defer(() => listener.proc.kill("SIGKILL"));
      const ticks = () => Number(/"ticks":(\d+)\}\n$/.exec(listener.out())?.[1] ?? 0);
      await waitUntil(() => ticks() > 5, "ticks from the guest");

      const port = 7300 + at.n;
      const migrateUri = `tcp:${ip.bWan}:${4440 + at.n}`;
      const release = `${at.dir}.release`;
      const dest = spawnIn(ns.B, [
        "env", `WANMIG_TEST_HOLD_AT=dest-cont:${release}`, process.execPath, MAIN, "dest", "--name", "vm", "--image", join(b, "vm.img"), "--run-dir", b,
        "--listen", `${ip.bWan}:${port}`, "--secret-file", secret, "--hypervisor", "qemu", "--qmp", `unix:${join(b, "dst.qmp")}`, "--vm-dev", "tap0", "--json",
      ], "dest");
      at.defer(() => dest.proc.kill("SIGKILL"));
      await dest.log.waitFor("listening on");
      const dst = startGuest({ name: "dst", dir: b, nbdSocket: join(b, "vm.nbd"), netnsExec: net.exec(ns.B), incoming: migrateUri, hold: true, openTimeout: 120, nic });
      at.defer(() => dst.stop());
      client.proc.kill("SIGUSR1"); // quiet through the move: its probes would make B look the guest up
      const source = spawnIn(ns.A, [
        process.execPath, MAIN, "source", "--name", "vm", "--run-dir", a, "--to", `${ip.bWan}:${port}`, "--secret-file", secret, "--json",
        "--hypervisor", "qemu", "--qmp", `unix:${src.qmpPath}`, "--migrate-uri", migrateUri,
        "--old-ip", ip.guest, "--tunnel", "vxlan", "--tunnel-idle", "2s",
      ], "source");
      at.defer(() => source.proc.kill("SIGKILL"));
      const ram = ramAtSwitchover(at, src, dst, release);
      ram.catch(() => undefined);
      await ours(() => waitUntil(() => source.out().includes('"event":"done"'), "the migration", 180_000));
      const { heldMs } = await ram;
      await ours(() => dest.log.waitFor("the VM runs here (qemu)", 60_000));
      // Only the guest speaks now: the listener's connection must carry on by itself (the
      // guest's frames go to B's tap, whose MAC its gateway entry learns from dest's ARP).
      const ticksBefore = ticks();
      await Bun.sleep(3000);
      expect(ticks()).toBeGreaterThan(ticksBefore + 20);
      client.proc.kill("SIGUSR2");
      const before = echoes();
      const writesBefore = dst.writes().length;
      await Bun.sleep(3000);
      expect(echoes()).toBeGreaterThan(before + 20); // the same connection, now through the tunnel to B
      expect(dst.writes().length).toBeGreaterThan(writesBefore + 3);
      client.proc.kill("SIGTERM");
      await client.proc.exited;
      const probe = JSON.parse(client.out().trim().split("\n").find((l) => l.includes('"sent"'))!);
      expect(probe.broke).toBeNull();
      listener.proc.kill("SIGTERM");
      await listener.proc.exited;
      const heard = JSON.parse(listener.out().trim().split("\n").find((l) => l.includes('"summary"'))!);
      expect(heard.broke).toBeNull();
      expect(src.failures()).toEqual([]);
      expect(dst.failures()).toEqual([]);
      await ours(async () => expect(await source.proc.exited).toBe(0)); // after the idle time: torn down
      console.log(`real VM over the redirect: longest gap of a 50 ms probe ${probe.longestGapMs} ms, of a listening client ${heard.longestGapMs} ms (${heldMs} ms of it held for the RAM check); ${probe.sent} probes, ${probe.echoes} echoes, ${heard.ticks} ticks`);
      dest.proc.kill("SIGTERM");
      await dest.proc.exited;
    });
  }, 480_000);
});
