// --hypervisor libvirt against two real libvirtd (helpers/libvirt-hosts.ts: each its own
// network, mount and UTS namespace, host UUID and TCP listener), not a shim. A QEMU domain
// (type qemu: TCG) whose disk is wanmig's NBD export on a unix socket at the same path on
// both hosts keeps writing to it as fast as its guest can (init.sh, slp=0) while
// `wanmig source --hypervisor libvirt` moves it: `virsh migrate --live --suspend` for the
// memory, the disk's hand-off, `virsh resume` at B once the disk is verified.
// Pass: the guest carries on at B with no verify failure, B's image holds the last write of
// every block the guest wrote on either host, A's disk is fenced, and the domain runs on
// exactly one host.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildGuest, GUEST_DIR, guestFailures, guestWrites, lostWrites, type SerialLine } from "./helpers/guest.ts";
import { libvirtInstalled, libvirtPair, type LibvirtPair } from "./helpers/libvirt-hosts.ts";
import { MAIN, REPO, sparseFile, tempDir } from "./helpers/serve-process.ts";
import { moveTimes, writeError } from "./helpers/migration.ts";
import { NbdErr } from "../src/disk/nbd/nbd-protocol.ts";

const dir = tempDir("wanmig-libvirt-");
let pair: LibvirtPair | undefined;

beforeAll(async () => {
  if (!libvirtInstalled()) return;
  await buildGuest();
  // The README's hook (scripts/libvirt-hook-qemu) on both hosts, calling this tree's wanmig.
  const wrapper = join(dir.path, "wanmig");
  writeFileSync(wrapper, `#!/bin/sh\nexec ${process.execPath} ${MAIN} "$@"\n`);
  chmodSync(wrapper, 0o755);
  const hook = readFileSync(join(REPO, "scripts", "libvirt-hook-qemu"), "utf8").replace("WANMIG=${WANMIG:-wanmig}", `WANMIG=${wrapper}`);
  pair = await libvirtPair(dir.path, { hook });
}, 300_000);

afterAll(async () => {
  await pair?.remove();
  if (process.env.WANMIG_DEBUG_LIBVIRT) return void console.log(`kept ${dir.path}`);
  dir.remove();
});

/** The domain as an operator would write it: its disk is wanmig's export on a unix socket, the same path on every host. */
function domainXml(consolePath: string, name = "vm"): string {
  return `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${join(GUEST_DIR, "vmlinux")}</kernel>
    <initrd>${join(GUEST_DIR, "initrd.gz")}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 slp=0</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='nbd' name='disk0'>
        <host transport='unix' socket='/run/wanmig/${name}.nbd'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='${consolePath}'/><target port='0'/></serial>
    <console type='file'><source path='${consolePath}'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

/** A guest console written to a file: its lines stamped with this host's clock as they appear (polled every 10 ms). */
function tailConsole(path: string) {
  const lines: SerialLine[] = [];
  let seen = 0;
  const timer = setInterval(() => {
    if (!existsSync(path)) return;
    const text = readFileSync(path, "latin1");
    const complete = text.slice(0, text.lastIndexOf("\n") + 1);
    if (complete.length <= seen) return;
    for (const l of complete.slice(seen).split("\n").filter(Boolean)) lines.push({ t: Date.now(), text: l.replace(/\r$/, "") });
    seen = complete.length;
  }, 10);
  return {
    lines,
    stop: () => clearInterval(timer),
    writes: () => guestWrites(lines),
    failures: () => guestFailures(lines),
    async waitFor(re: RegExp, timeoutMs = 90_000) {
      const end = Date.now() + timeoutMs;
      while (!lines.some((l) => re.test(l.text))) {
        if (Date.now() > end) throw new Error(`no ${re} on ${path} within ${timeoutMs} ms: ${lines.slice(-3).map((l) => l.text).join(" | ")}`);
        await Bun.sleep(50);
      }
    },
  };
}

describe.skipIf(!libvirtInstalled())("--hypervisor libvirt between two real libvirtd", () => {
  test("a running domain moves with virsh migrate --live --suspend, its disk handed over, resumed at B: no verify failure, every last write on B's disk, A fenced, the domain on exactly one host", async () => {
    const { a, b } = pair!;
    const wanmig = (h: typeof a, args: string[], what: string) => h.spawn([process.execPath, MAIN, ...args], what);
    await sparseFile(join(a.runDir, "vm.img"), 64 * 1024 * 1024);
    const serve = wanmig(a, ["serve", "--name", "vm", "--image", "/run/wanmig/vm.img", "--run-dir", "/run/wanmig"], "serve");
    await serve.log.waitFor("serving ");
    // The console's path is the same on both hosts, as the domain's XML travels with it.
    const xml = join(dir.path, "vm.xml");
    await Bun.write(xml, domainXml("/run/wanmig/vm.console"));
    await a.run(["virsh", "-c", "qemu:///system", "create", xml]);
    const atA = tailConsole(join(a.runDir, "vm.console"));
    const atB = tailConsole(join(b.runDir, "vm.console"));
    try {
      await atA.waitFor(/GUEST W i=20 /);
      const dest = wanmig(b, ["dest", "--name", "vm", "--image", "/run/wanmig/vm.img", "--run-dir", "/run/wanmig", "--listen", `${b.ip}:7400`, "--insecure", "--hypervisor", "libvirt", "--domain", "vm", "--json"], "dest");
      await dest.log.waitFor("listening on");
      const source = wanmig(a, ["source", "--name", "vm", "--run-dir", "/run/wanmig", "--to", `${b.ip}:7400`, "--insecure", "--json", "--hypervisor", "libvirt", "--domain", "vm", "--dest-uri", b.uri], "source");
      const code = await source.proc.exited;
      await Bun.sleep(50);
      expect(code, source.log.text()).toBe(0);
      await dest.log.waitFor("the VM runs here (libvirt)", 60_000);
      const before = atB.writes().length;
      await atB.waitFor(new RegExp(`GUEST W i=${(atA.writes().at(-1)?.i ?? 0) + 30} `), 60_000); // it carries on at B
      expect(atB.writes().length).toBeGreaterThan(before);

      // Exactly one host runs it: gone from A's libvirt, running at B's; A's disk fenced.
      expect((await a.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"])).stdout.trim()).toBe("");
      expect((await b.run(["virsh", "-c", "qemu:///system", "domstate", "vm"])).stdout.trim()).toBe("running");
      expect(await writeError(join(a.runDir, "vm.nbd"))).toBe(NbdErr.EPERM);

      // Downtime: libvirt's (the source's pause until the memory is all at B, which QEMU
      // measures), then paused at B until wanmig's virsh resume; and the guest's own view,
      // the gap in its writes as they appeared on the two consoles.
      // (The source's "paused" is when virsh migrate returned: the memory was at B by then.)
      const { done, pausedAt: migratedAt, runningAt } = moveTimes(source.out(), dest.out());
      const job = (await b.run(["virsh", "-c", "qemu:///system", "domjobinfo", "--completed", "vm"])).stdout;
      const qemuDowntime = Number(/Total downtime:\s+(\d+)/.exec(job)?.[1]);
      const gap = atB.writes()[0]!.t - atA.writes().at(-1)!.t;
      const version = (await a.run(["virsh", "-c", "qemu:///system", "version"])).stdout.match(/libvirt ([\d.]+)/)?.[1];
      console.log(
        `libvirt: libvirt ${version}; migration ${done.migrationTimeMs} ms; VM downtime ${qemuDowntime + Math.max(0, runningAt - migratedAt)} ms ` +
          `(libvirt's ${qemuDowntime} ms until the memory was at B, then ${runningAt - migratedAt} ms paused there until the disk was verified); ` +
          `storage downtime ${done.storageDowntimeMs} ms; guest write gap ${gap} ms (last at A ${atA.writes().at(-1)!.t - migratedAt} ms from virsh migrate's return, first at B ${atB.writes()[0]!.t - runningAt} ms from the resume); writes A ${atA.writes().length}, B ${atB.writes().length}`,
      );
      expect(qemuDowntime).toBeGreaterThan(0);
      expect(atA.failures()).toEqual([]);
      expect(atB.failures()).toEqual([]);
      await b.run(["virsh", "-c", "qemu:///system", "destroy", "vm"]);
      await Bun.sleep(200);
      expect(lostWrites(join(b.runDir, "vm.img"), [...atA.writes(), ...atB.writes()])).toEqual([]);
    } finally {
      atA.stop();
      atB.stop();
    }
  }, 300_000);

  test("the README's hook refuses a plain virsh migrate whose wanmig disk nobody receives at B; the domain runs on at A", async () => {
    const { a, b } = pair!;
    await sparseFile(join(a.runDir, "plain.img"), 16 * 1024 * 1024);
    const serve = a.spawn([process.execPath, MAIN, "serve", "--name", "plain", "--image", "/run/wanmig/plain.img", "--run-dir", "/run/wanmig"], "serve");
    await serve.log.waitFor("serving ");
    const xml = join(dir.path, "plain.xml");
    await Bun.write(xml, domainXml("/run/wanmig/plain.console", "plain"));
    await a.run(["virsh", "-c", "qemu:///system", "create", xml]);
    try {
      const r = await a.run(["virsh", "-c", "qemu:///system", "migrate", "--live", "plain", b.uri], { allowFail: true });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("wanmig is not receiving plain here");
      expect((await a.run(["virsh", "-c", "qemu:///system", "domstate", "plain"])).stdout.trim()).toBe("running");
      expect((await b.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"])).stdout.trim()).not.toContain("plain");
    } finally {
      await a.run(["virsh", "-c", "qemu:///system", "destroy", "plain"], { allowFail: true });
    }
  }, 120_000);
});
