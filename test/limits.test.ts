// Large images, full disks: what an operator meets on a real host.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, readFileSync, rmSync, statfsSync } from "node:fs";
import { join } from "node:path";
import { NbdErr } from "../src/disk/nbd/nbd-protocol.ts";
import { RawNbd } from "./helpers/raw-nbd.ts";
import { sh, sparseFile, startServe, tempDir } from "./helpers/serve-process.ts";

const GiB = 1024 ** 3;
let dir: ReturnType<typeof tempDir>;
beforeAll(() => {
  dir = tempDir();
});
afterAll(() => dir?.remove());

function rssMiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;
}

test("a 200 GiB sparse image: exact size, I/O past 4 GiB, memory independent of size", async () => {
  const image = join(dir.path, "big.img");
  await sparseFile(image, 200 * GiB);
  const srv = await startServe({ image, runDir: dir.path, name: "big" });
  try {
    expect(Number((await sh(["nbdinfo", "--size", srv.uri])).stdout)).toBe(200 * GiB);
    const end = 200 * GiB - 8192;
    const far = 5 * GiB + 12345;
    await sh(["qemu-io", "-f", "raw", "-c", `write -P 0x5a ${end} 8192`, "-c", `write -P 0xa5 ${far} 1000`, srv.uri]);
    const r = await sh(["qemu-io", "-f", "raw", "-c", `read -P 0x5a ${end} 8192`, "-c", `read -P 0xa5 ${far} 1000`, "-c", `read -P 0 ${far + 1000} 4096`, srv.uri]);
    expect(r.stdout).not.toContain("verification failed");
    // The image stays sparse: only what was written is allocated.
    expect(Number((await sh(["du", "-k", image])).stdout.split("\t")[0])).toBeLessThan(1024);
    expect(rssMiB(srv.proc.pid)).toBeLessThan(200);
  } finally {
    await srv.stop();
  }
});

describe("full disks (tmpfs mounts; needs root)", () => {
  const mnt = () => join(dir.path, "small");
  let mounted = false;
  beforeAll(async () => {
    mkdirSync(mnt(), { recursive: true });
    mounted = (await sh(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt()], { allowFail: true })).code === 0;
  });
  afterAll(async () => {
    if (mounted) await sh(["umount", "-l", mnt()], { allowFail: true });
  });

  test("the image's disk fills up: the client gets ENOSPC, the server goes on", async () => {
    if (!mounted) throw new Error("cannot mount tmpfs: these tests need root");
    const image = join(mnt(), "img");
    await sparseFile(image, 16 * 1024 * 1024);
    const srv = await startServe({ image, runDir: dir.path, name: "full" });
    try {
      const c = await RawNbd.connect(srv.socket);
      await c.go();
      expect(await c.write(0, Buffer.alloc(4096, 1))).toBe(0);
      let err = 0;
      for (let i = 1; i < 8 && err === 0; i++) err = await c.write(i * 1024 * 1024, Buffer.alloc(1024 * 1024, 2));
      expect(err).toBe(NbdErr.ENOSPC);
      const r = await c.read(0, 4096);
      expect(r.data!.every((b) => b === 1)).toBe(true);
      c.disconnect();
      expect(Number((await sh(["nbdinfo", "--size", srv.uri])).stdout)).toBe(16 * 1024 * 1024);
    } finally {
      await srv.stop();
    }
    await sh(["rm", "-f", image]);
  });

  for (const how of ["its bound", "ENOSPC"] as const) {
    test(`the delta log fills up (${how}): recording is marked failed, the VM's writes go on`, async () => {
      if (!mounted) throw new Error("cannot mount tmpfs: these tests need root");
      const image = join(dir.path, "rec.img");
      await sparseFile(image, 16 * 1024 * 1024);
      const srv = await startServe({ image, runDir: dir.path, name: "logfull" });
      const filler = join(mnt(), "filler");
      try {
        await srv.ctl.throttle({ enabled: false });
        const rec = await srv.ctl.startRecording({ dir: mnt() });
        // The bound is half of what was free (2 MiB of 4); something else taking the rest
        // of the space after the start leaves the log to meet ENOSPC first.
        expect(rec.maxBytes).toBeGreaterThan(1024 * 1024);
        expect(rec.maxBytes).toBeLessThanOrEqual(2 * 1024 * 1024);
        if (how === "ENOSPC") {
          const fs = statfsSync(mnt());
          const leave = 512 * 1024;
          await sh(["dd", "if=/dev/zero", `of=${filler}`, "bs=4k", `count=${Math.floor((fs.bavail * fs.bsize - leave) / 4096)}`]);
        }
        const c = await RawNbd.connect(srv.socket);
        await c.go();
        for (let i = 0; i < 8; i++) expect(await c.write(i * 1024 * 1024, Buffer.alloc(1024 * 1024, 3 + i))).toBe(0);
        const st = await srv.ctl.status();
        expect(st.recording.failed).toContain(how === "ENOSPC" ? "ENOSPC" : "the delta log reached its bound");
        expect(srv.stderr()).toContain("record mode failed");
        const r = await c.read(7 * 1024 * 1024, 4096);
        expect(r.data!.every((b) => b === 10)).toBe(true);
        c.disconnect();
      } finally {
        await srv.stop();
        for (const f of readdirSync(mnt())) rmSync(join(mnt(), f), { force: true }); // the filler and the log
      }
    });
  }
});
