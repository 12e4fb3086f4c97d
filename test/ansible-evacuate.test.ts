// Evacuating a host with the Ansible collection (ansible/wanmig/vm), run by Debian's real
// ansible-core against hosts that are network namespaces on one bridge, each with a real
// sshd: the controller in one, host A (the VMs' disks) and targets B and C in others. The
// collection is installed with ansible-galaxy from the repository, and installs the compiled
// wanmig on every host itself.
//
// In order: check mode on a target without space (reported per VM, nothing moved); the
// evacuation of five storage-only VMs (two under full-speed writers) and a real QEMU guest
// (TCG, --hypervisor qemu, its destination QEMU waiting at B), concurrency 2 and a 200 Mbit/s
// budget (every disk byte-identical, no acknowledged write lost, each at exactly one host,
// the guest running at B with every write it made); the same playbook
// again (nothing changes, every VM ok); a destination host lost in the middle of one VM's
// move (that VM fails alone, exit 5 mapped, its disk writable at A; the others complete); and
// the next run, which moves it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildGuest, type Guest, lostWrites as guestLostWrites, startGuest } from "./helpers/guest.ts";
import { lostWrites, type StressWriter, stressWriter } from "./helpers/stress-writer.ts";
import { expectMovedOnce, MiB, writable } from "./helpers/migration.ts";
import { lan, type Lan } from "./helpers/netns.ts";
import { randomFile, REPO, type ServeHandle, sh, sparseFile, startServe, tempDir } from "./helpers/serve-process.ts";
import { startSshd } from "./helpers/sshd.ts";

const BIN = join(REPO, "dist", "wanmig");
const COLLECTION = join(REPO, "ansible", "wanmig", "vm");
const IMAGE_MIB = 48;
const DATA_MIB = 24;

type Sshd = Awaited<ReturnType<typeof startSshd>>;
let dir: ReturnType<typeof tempDir>;
let net: Lan;
const sshd: Record<string, Sshd> = {};
const serves: Record<string, ServeHandle> = {};
let key: string;

const hostDir = (h: string) => join(dir.path, h);
const imageOf = (h: string, vm: string) => join(hostDir(h), "images", `${vm}.img`);
const socketOf = (h: string, vm: string) => join(hostDir(h), "run", `${vm}.nbd`);

function inventory(): string {
  const host = (name: string, on: string, dirName = name) =>
    [
      `    ${name}:`,
      `      ansible_host: ${net.hosts[on]!.ip}`,
      `      ansible_port: ${sshd[on]!.port}`,
      `      wanmig_bin: ${join(hostDir(on), "bin", "wanmig")}`,
      `      wanmig_run_dir: ${join(hostDir(dirName), "run")}`,
      `      wanmig_image_dir: ${join(hostDir(dirName), "images")}`,
    ].join("\n");
  return [
    "all:",
    "  vars:",
    "    ansible_user: root",
    `    ansible_ssh_private_key_file: ${key}`,
    '    ansible_ssh_common_args: "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"',
    "    ansible_python_interpreter: /usr/bin/python3",
    `    wanmig_ssh_command: ${join(dir.path, "ssh")}`,
    `    wanmig_binary_src: ${BIN}`,
    "  hosts:",
    host("hosta", "hosta"),
    host("hostb", "hostb"),
    host("hostc", "hostc"),
    // A target whose image directory is a 4 MiB file system: no VM fits there.
    host("hostfull", "hostc", "full"),
  ].join("\n");
}

async function playbook(extra: Record<string, unknown>, flags: string[] = []) {
  const inv = join(dir.path, "inventory.yml");
  writeFileSync(inv, inventory());
  const report = join(dir.path, `report-${Date.now()}.json`);
  const argv = [...net.exec(net.hosts.ctl!.ns), "ansible-playbook", "-i", inv, "wanmig.vm.evacuate", "-e", JSON.stringify({ evacuate: "hosta", wanmig_report: report, wanmig_concurrency: 2, wanmig_bandwidth: "200mbit", ...extra }), ...flags];
  const p = Bun.spawn(argv, {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ANSIBLE_COLLECTIONS_PATH: join(dir.path, "collections"), ANSIBLE_FORKS: "12", ANSIBLE_NOCOLOR: "1", ANSIBLE_HOST_KEY_CHECKING: "False", ANSIBLE_RETRY_FILES_ENABLED: "False", ANSIBLE_LOCAL_TEMP: join(dir.path, "ansible-tmp") },
  });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (process.env.WANMIG_TEST_ANSIBLE_LOG) writeFileSync(process.env.WANMIG_TEST_ANSIBLE_LOG, `${argv.join(" ")}\n${stdout}\n${stderr}`);
  const rows = existsSync(report) ? (JSON.parse(readFileSync(report, "utf8")).vms as Record<string, any>[]) : [];
  return { stdout, stderr, code, rows, row: (vm: string) => rows.find((r) => r.vm === vm)! };
}

async function serveVm(vm: string) {
  const image = imageOf("hosta", vm);
  await sparseFile(image, IMAGE_MIB * MiB);
  await randomFile(join(dir.path, "data"), DATA_MIB * MiB);
  await sh(["dd", `if=${join(dir.path, "data")}`, `of=${image}`, "conv=notrunc", "status=none"]);
  serves[vm] = await startServe({ image, runDir: join(hostDir("hosta"), "run"), name: vm });
}

beforeAll(async () => {
  await buildGuest();
  await sh(["npm", "run", "--silent", "build"], { env: { PATH: `${join(REPO, "node_modules", ".bin")}:${process.env.PATH}` } });
  dir = tempDir("wanmig-ansible-");
  for (const h of ["hosta", "hostb", "hostc", "full"]) await sh(["mkdir", "-p", join(hostDir(h), "run"), join(hostDir(h), "images"), join(hostDir(h), "bin")]);
  // Mounted before any sshd starts: each sees only the mounts made before it (its own mount namespace).
  await sh(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", join(hostDir("full"), "images")]);
  net = await lan(["ctl", "hosta", "hostb", "hostc"]);
  key = join(dir.path, "user_key");
  await sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key]);
  writeFileSync(join(dir.path, "ssh"), `#!/bin/sh\nexec ssh -i ${key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$@"\n`);
  chmodSync(join(dir.path, "ssh"), 0o755);
  for (const h of ["hosta", "hostb", "hostc"]) sshd[h] = await startSshd(join(dir.path, `sshd-${h}`), { ns: net.hosts[h]!.ns, ip: net.hosts[h]!.ip, clientNs: net.hosts.ctl!.ns }, {}, { userKey: key });
  await sh(["ansible-galaxy", "collection", "install", "--force", COLLECTION, "-p", join(dir.path, "collections")]);
  for (const vm of ["vm1", "vm2", "vm3", "vm4", "vm5"]) await serveVm(vm);
  // wanmig is on the source already, as an operator has it; the playbook brings it to the targets.
  await sh(["cp", BIN, join(hostDir("hosta"), "bin", "wanmig")]);
}, 300_000);

afterAll(async () => {
  for (const g of guests) await g.stop().catch(() => undefined);
  for (const s of Object.values(serves)) await s.stop().catch(() => undefined);
  for (const s of Object.values(sshd)) await s.stop().catch(() => undefined);
  // The destinations' daemons (pid files in the targets' run directories).
  for (const h of ["hostb", "hostc"]) await sh(["sh", "-c", `for p in ${join(hostDir(h), "run")}/*.pid; do [ -f "$p" ] && kill "$(cat "$p")"; done; true`], { allowFail: true });
  await net?.remove();
  await sh(["umount", "-l", join(hostDir("full"), "images")], { allowFail: true });
  dir?.remove();
});

const guests: Guest[] = [];

/**
 * VM "vmq": a real guest (TCG) on A whose disk is served there and which writes to it all
 * the time, and its destination QEMU at B, started -incoming as an operator prepares one.
 * `extra`: the playbook's variables for it. `runsAtB`: the guest carries on at B, every write
 * it made on B's disk, none failed; A's QEMU is done.
 */
async function qemuGuestOnA() {
  const image = imageOf("hosta", "vmq");
  await sparseFile(image, 64 * MiB);
  serves.vmq = await startServe({ image, runDir: join(hostDir("hosta"), "run"), name: "vmq" });
  const src = startGuest({ name: "vmq-src", dir: join(hostDir("hosta"), "run"), nbdSocket: socketOf("hosta", "vmq"), exports: ["vmq"], netnsExec: net.exec(net.hosts.hosta!.ns) });
  guests.push(src);
  await src.waitFor(/GUEST W i=1 /, 90_000);
  const migrateUri = `tcp:${net.hosts.hostb!.ip}:4444`;
  const dst = startGuest({ name: "vmq-dst", dir: join(hostDir("hostb"), "run"), nbdSocket: socketOf("hostb", "vmq"), exports: ["vmq"], netnsExec: net.exec(net.hosts.hostb!.ns), incoming: migrateUri, openTimeout: 300 });
  guests.push(dst);
  for (let i = 0; i < 100 && !existsSync(dst.qmpPath); i++) await Bun.sleep(50);
  const extra = {
    wanmig_evacuate_targets: ["hostb", "hostc"],
    wanmig_evacuate_map: { vmq: "hostb" },
    wanmig_vm_args: { vmq: { hypervisor: "qemu", qmp: `unix:${src.qmpPath}`, remote_qmp: `unix:${dst.qmpPath}`, migrate_uri: migrateUri } },
  };
  return {
    extra,
    async runsAtB() {
      const before = dst.writes().length;
      for (let i = 0; i < 200 && dst.writes().length < before + 5; i++) await Bun.sleep(50);
      expect(dst.writes().length).toBeGreaterThan(before + 4);
      expect([...src.failures(), ...dst.failures()]).toEqual([]);
      const q = await src.testQmp();
      expect((await q.execute<{ status: string }>("query-status")).status).toBe("postmigrate");
      q.close();
      await dst.stop(); // B's disk is still; then every write either QEMU acknowledged is on it
      expect(guestLostWrites(imageOf("hostb", "vmq"), [...src.writes(), ...dst.writes()])).toEqual([]);
      await expectMovedOnce(socketOf("hosta", "vmq"), socketOf("hostb", "vmq"));
    },
  };
}

const moved = (vm: string, to: string) => ({ srcSocket: socketOf("hosta", vm), dstSocket: socketOf(to, vm), image: imageOf("hosta", vm), destImage: imageOf(to, vm) });

describe("ansible-playbook wanmig.vm.evacuate", () => {
  test("check mode, to a target without space: every VM reported as failing its pre-flight, nothing moved", async () => {
    const r = await playbook({ wanmig_evacuate_targets: ["hostfull"] }, ["--check"]);
    expect(r.code, r.stdout + r.stderr).not.toBe(0);
    expect(r.rows.map((row) => row.vm)).toEqual(["vm1", "vm2", "vm3", "vm4", "vm5"]);
    for (const row of r.rows) {
      expect(row.outcome).toBe("failed");
      expect(row.rc).toBe(3);
      expect(row.msg).toContain("space");
      expect(row.vm_runs_here).toBe(true);
    }
    for (const vm of Object.keys(serves)) {
      expect((await serves[vm]!.ctl.status()).state).toBe("serving");
      expect(existsSync(imageOf("full", vm))).toBe(false);
    }
  }, 240_000);

  test("evacuates A to B and C: five disks (two under full-speed writers) and a real QEMU guest, concurrency 2, 200 Mbit/s; run again: nothing changes", async () => {
    const guest = await qemuGuestOnA();
    const writers: Record<string, StressWriter> = {
      vm1: await stressWriter(socketOf("hosta", "vm1"), { pattern: "random4k", bytes: 32 * MiB }),
      vm2: await stressWriter(socketOf("hosta", "vm2"), { pattern: "seq1m", bytes: 32 * MiB }),
    };
    const r = await playbook(guest.extra);
    for (const w of Object.values(writers)) await w.stop();
    const guestRow = r.row("vmq");
    expect(guestRow.outcome, JSON.stringify(guestRow)).toBe("moved");
    expect(guestRow.target).toBe("hostb");
    expect(guestRow.downtime_ms).toBeGreaterThanOrEqual(guestRow.storage_downtime_ms); // the VM's pause holds the disk's hand-off
    await guest.runsAtB();
    console.log(r.stdout.split("\n").filter((l) => /moved to|already|FAILED/.test(l)).join("\n"));
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const targets: Record<string, string> = { vm1: "hostb", vm2: "hostc", vm3: "hostb", vm4: "hostc", vm5: "hostb" };
    for (const [vm, to] of Object.entries(targets)) {
      const row = r.row(vm);
      expect(row.outcome, JSON.stringify(row)).toBe("moved");
      expect(row.target).toBe(to);
      expect(row.bytes_on_wire).toBeGreaterThan(0);
      const m = moved(vm, to);
      await sh(["cmp", m.image, m.destImage]);
      if (writers[vm]) expect(lostWrites(m.destImage, writers[vm]!.acked)).toEqual([]);
      await expectMovedOnce(m.srcSocket, m.dstSocket);
    }
    expect(writers.vm1!.writes).toBeGreaterThan(0);

    const again = await playbook(guest.extra);
    expect(again.code, again.stdout + again.stderr).toBe(0);
    for (const row of again.rows) expect(row.outcome, JSON.stringify(row)).toBe("already-there");
    expect(again.stdout).toMatch(/hosta\s+: ok=\d+\s+changed=0/);
    for (const vm of Object.keys(targets)) expect(again.stdout).toMatch(new RegExp(`hosta/${vm}\\s+: ok=\\d+\\s+changed=0\\s+unreachable=0\\s+failed=0`));
  }, 600_000);

  test("a target lost in the middle of one VM's move: that VM fails alone (exit 5, writable at A), the others move; the next run moves it", async () => {
    for (const vm of ["vm6", "vm7", "vm8"]) await serveVm(vm);
    const extra = { wanmig_evacuate_targets: ["hostb"], wanmig_evacuate_map: { vm7: "hostc" } };
    const run = playbook(extra);
    // Host C goes away once vm7's destination runs there: its sshd stops listening and the dest dies.
    let lost = false;
    for (let i = 0; i < 1200 && !lost; i++) {
      const pids = (await sh(["pgrep", "-f", "dest --stdio --name vm7"], { allowFail: true })).stdout.trim();
      if (pids) {
        await sshd.hostc!.stop();
        await sh(["kill", "-9", ...pids.split("\n")], { allowFail: true });
        lost = true;
      } else await Bun.sleep(50);
    }
    expect(lost).toBe(true);
    const r = await run;
    console.log(r.stdout.split("\n").filter((l) => /moved to|already|FAILED/.test(l)).join("\n"));
    expect(r.code).not.toBe(0);
    const failed = r.row("vm7");
    expect(failed.outcome, JSON.stringify(failed)).toBe("failed");
    expect(failed.rc).toBe(5);
    expect(failed.kind).toBe("aborted-vm-runs-here");
    expect(failed.vm_runs_here).toBe(true);
    expect(await writable(socketOf("hosta", "vm7"))).toBe(true);
    expect((await serves.vm7!.ctl.status()).state).toBe("serving");
    for (const vm of ["vm6", "vm8"]) {
      expect(r.row(vm).outcome).toBe("moved");
      await sh(["cmp", imageOf("hosta", vm), imageOf("hostb", vm)]);
    }
    for (const vm of ["vm1", "vm2", "vm3", "vm4", "vm5", "vmq"]) expect(r.row(vm).outcome).toBe("already-there");

    // Host C is back (a new sshd, a new port): the next run moves vm7 and touches nothing else.
    sshd.hostc = await startSshd(join(dir.path, "sshd-hostc-again"), { ns: net.hosts.hostc!.ns, ip: net.hosts.hostc!.ip, clientNs: net.hosts.ctl!.ns }, {}, { userKey: key });
    const next = await playbook(extra);
    expect(next.code, next.stdout + next.stderr).toBe(0);
    expect(next.row("vm7").outcome).toBe("moved");
    for (const row of next.rows.filter((x) => x.vm !== "vm7")) expect(row.outcome).toBe("already-there");
    await sh(["cmp", imageOf("hosta", "vm7"), imageOf("hostc", "vm7")]);
    await expectMovedOnce(socketOf("hosta", "vm7"), socketOf("hostc", "vm7"));
  }, 600_000);
});
