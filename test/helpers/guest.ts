// The real-VM test's guest under QEMU (TCG: /dev/kvm does not work on these machines),
// and what its serial console says. The guest (scripts/guest/init.sh) prints one line per
// acknowledged disk write; each line is stamped with the host's clock as it arrives.
import type { Subprocess } from "bun";
import { closeSync, openSync, readSync } from "node:fs";
import { join } from "node:path";
import { QmpClient } from "../../src/hypervisor/qmp.ts";
import { logger } from "../../src/log.ts";
import { REPO, sh } from "./serve-process.ts";

export const GUEST_DIR = join(REPO, ".cache", "guest");

export async function buildGuest(): Promise<void> {
  await sh(["bash", join(REPO, "scripts", "guest", "build.sh"), GUEST_DIR]);
}

export interface SerialLine {
  t: number; // Date.now() when the line arrived
  text: string;
}

/** One acknowledged write, as init.sh prints it: GUEST W i=N off=BLOCK dev=DISK up=UPTIME. */
export interface GuestWrite {
  i: number;
  off: number;
  /** vda unless the line names another disk. */
  dev: string;
  /** The guest's own clock (it counts a pause), when the line has it. */
  up?: number;
  /** When the host saw the line. */
  t: number;
}

/** The guest's acknowledged writes among its console lines (QEMU's serial, libvirt's or Xen's console log). */
export function guestWrites(lines: readonly SerialLine[]): GuestWrite[] {
  return lines.flatMap((l) => {
    const m = /^GUEST W i=(\d+) off=(\d+)(?: dev=(\w+))?(?: up=([\d.]+))?/.exec(l.text);
    return m ? [{ i: Number(m[1]), off: Number(m[2]), dev: m[3] ?? "vda", up: m[4] === undefined ? undefined : Number(m[4]), t: l.t }] : [];
  });
}

/** The console lines that say the guest went wrong: a verify failure, a failed write, a kernel fault. */
export function guestFailures(lines: readonly SerialLine[]): string[] {
  return lines.filter((l) => /VERIFY-FAIL|WRITE-ERR|NO-DISK|MOUNT-FAIL|Oops|BUG:|Kernel panic|general protection|segfault/.test(l.text)).map((l) => l.text);
}

export interface Guest {
  proc: Subprocess;
  lines: SerialLine[];
  qmpPath: string;
  /** Guest RAM, bytes (all of it is dumped by the RAM check). */
  ramBytes: number;
  qmp(): Promise<QmpClient>;
  /** A second QMP monitor, the test's own: QEMU serves one client per monitor, and wanmig holds the first. */
  testQmp(): Promise<QmpClient>;
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<SerialLine>;
  /** The acknowledged writes; `dev`: which disk (vda, or vdb with two). */
  writes(): GuestWrite[];
  failures(): string[];
  stop(): Promise<void>;
}

/** Starts QEMU with the guest; its disk is the NBD server on `nbdSocket` (waited for, up to openTimeout s). */
export function startGuest(opts: {
  name: string;
  dir: string;
  nbdSocket: string;
  netnsExec?: string[];
  incoming?: string;
  /** With `incoming`: start held (-S), so that the test can compare RAM before the guest runs (ram-check.ts). */
  hold?: boolean;
  openTimeout?: number;
  /** A NIC on this tap device (in the QEMU's namespace), and the guest's address/gateway (init.sh's gip=, ggw=). */
  nic?: { tap: string; gip: string; ggw: string };
  /** init.sh's workload: raw block writes (default), the ext4 one (mode=fs), or the paper's web, post, video and Bonnie workloads (mode=paper); the host makes the file system for the last two. */
  mode?: "block" | "fs" | "paper";
  /** mode=fs or mode=paper: the Bonnie-like writer besides (init.sh). */
  bonnie?: boolean;
  /** The NBD exports that are the guest's disks, in order (default: the VM's one disk); two: it writes to both. */
  exports?: string[];
  /** Guest RAM (default 128 MiB: the RAM check dumps all of it). */
  ramMiB?: number;
}): Guest {
  const exports = opts.exports ?? ["vm"];
  const qmpPath = join(opts.dir, `${opts.name}.qmp`);
  const testQmpPath = join(opts.dir, `${opts.name}.test.qmp`);
  const ramMiB = opts.ramMiB ?? 128;
  const argv = [
    ...(opts.netnsExec ?? []),
    "qemu-system-x86_64", "-name", opts.name, "-accel", "tcg", "-m", String(ramMiB), "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
    "-kernel", join(GUEST_DIR, "vmlinux"), "-initrd", join(GUEST_DIR, "initrd.gz"), "-append", `console=ttyS0 quiet panic=-1 slp=0.05${opts.mode && opts.mode !== "block" ? ` mode=${opts.mode}` : ""}${opts.bonnie ? " bonnie=1" : ""}${exports.length > 1 ? ` disks=${exports.length}` : ""}${opts.nic ? ` gip=${opts.nic.gip} ggw=${opts.nic.ggw}` : ""}`,
    "-serial", "stdio", "-qmp", `unix:${qmpPath},server=on,wait=off`, "-qmp", `unix:${testQmpPath},server=on,wait=off`,
    ...exports.flatMap((name, i) => [
      "-blockdev", `driver=nbd,node-name=disk${i},server.type=unix,server.path=${opts.nbdSocket},export=${name},open-timeout=${opts.openTimeout ?? 30},discard=unmap`,
      "-device", `virtio-blk-pci,drive=disk${i},id=vblk${i}`,
    ]),
    ...(opts.nic ? ["-netdev", `tap,id=n0,ifname=${opts.nic.tap},script=no,downscript=no`, "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"] : []),
    ...(opts.incoming ? ["-incoming", opts.incoming, ...(opts.hold ? ["-S"] : [])] : []),
  ];
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const lines: SerialLine[] = [];
  let partial = "";
  (async () => {
    for await (const chunk of proc.stdout) {
      partial += new TextDecoder().decode(chunk);
      const parts = partial.split("\n");
      partial = parts.pop()!;
      for (const text of parts) lines.push({ t: Date.now(), text: text.replace(/\r$/, "") });
    }
  })();
  let stderr = "";
  (async () => {
    for await (const chunk of proc.stderr) stderr += new TextDecoder().decode(chunk);
  })();
  const guest: Guest = {
    proc,
    lines,
    qmpPath,
    ramBytes: ramMiB * 1024 * 1024,
    qmp: () => QmpClient.connect(qmpPath, logger("test-qmp")),
    testQmp: () => QmpClient.connect(testQmpPath, logger("test-qmp")),
    async waitFor(pattern, timeoutMs = 60_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const hit = lines.find((l) => pattern.test(l.text));
        if (hit) return hit;
        if (proc.exitCode !== null) throw new Error(`QEMU ${opts.name} exited ${proc.exitCode}: ${stderr}\n${lines.map((l) => l.text).join("\n")}`);
        if (Date.now() > end) throw new Error(`QEMU ${opts.name}: no ${pattern} within ${timeoutMs} ms: ${stderr}\n${lines.slice(-5).map((l) => l.text).join("\n")}`);
        await Bun.sleep(50);
      }
    },
    writes: () => guestWrites(lines),
    failures: () => guestFailures(lines),
    async stop() {
      proc.kill("SIGKILL");
      await proc.exited;
    },
  };
  return guest;
}

/**
 * The host-side check: for every block the guest wrote (as its serial lines say, on
 * either host), the image holds that block's last write. Returns the blocks that do not.
 */
export function lostWrites(image: string, writes: { i: number; off: number }[]): { off: number; want: string; got: string }[] {
  const last = new Map<number, number>();
  for (const w of writes) last.set(w.off, Math.max(last.get(w.off) ?? 0, w.i));
  const fd = openSync(image, "r");
  const RECORD = 27; // "CNT %010d OFF %08d"
  const buf = Buffer.alloc(RECORD);
  const lost: { off: number; want: string; got: string }[] = [];
  try {
    for (const [off, i] of last) {
      readSync(fd, buf, 0, RECORD, off * 4096);
      const want = `CNT ${String(i).padStart(10, "0")} OFF ${String(off).padStart(8, "0")}`;
      const got = buf.toString("latin1");
      if (got !== want) lost.push({ off, want, got: got.replace(/\0/g, ".") });
    }
  } finally {
    closeSync(fd);
  }
  return lost;
}
