// `wanmig serve` against the real NBD clients a user has: libnbd's tools, QEMU's, fio.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { statSync } from "node:fs";
import { randomFile, serveForSuite, sh, sparseFile } from "./helpers/serve-process.ts";

const MiB = 1024 * 1024;
const suite = serveForSuite((image) => sparseFile(image, 64 * MiB), { name: "vm1" });

describe("real NBD clients", () => {
  test("nbdinfo sees the size and the flags we advertise", async () => {
    const { stdout } = await sh(["nbdinfo", "--json", suite.srv.uri]);
    const info = JSON.parse(stdout);
    const ex = info.exports[0];
    expect(info.protocol).toBe("newstyle-fixed");
    expect(ex["export-size"]).toBe(64 * MiB);
    expect(ex.is_read_only).toBe(false);
    for (const flag of ["can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn"]) expect(ex[flag]).toBe(true);
    expect(ex.block_size_preferred).toBe(4096);
  });

  test("nbdinfo --list lists the VM's one disk as disk0; the VM's name and \"\" reach it too", async () => {
    const { stdout } = await sh(["nbdinfo", "--list", "--json", suite.srv.uri]);
    expect(JSON.parse(stdout).exports.map((e: { "export-name": string }) => e["export-name"])).toEqual(["disk0"]);
    for (const name of ["disk0", "vm1", ""]) expect((await sh(["nbdinfo", "--size", `nbd+unix:///${name}?socket=${suite.srv.socket}`])).stdout.trim()).toBe(String(statSync(suite.image).size));
  });

  test("nbdcopy writes 64 MiB of random data in and reads it back identical", async () => {
    const src = join(suite.dir.path, "random.bin");
    const back = join(suite.dir.path, "back.bin");
    await randomFile(src, 64 * MiB);
    await sh(["nbdcopy", "--flush", src, suite.srv.uri]);
    await sh(["nbdcopy", suite.srv.uri, back]);
    await sh(["cmp", src, back]);
    // qemu-img compares through its own NBD client, against the file on disk.
    const cmp = await sh(["qemu-img", "compare", "-f", "raw", "-F", "raw", src, suite.srv.uri]);
    expect(cmp.stdout).toContain("Images are identical");
    await sh(["cmp", src, suite.image]);
  });

  test("qemu-io pattern writes and reads at odd offsets and lengths", async () => {
    const ops = [
      [1, 1, 0x11],
      [4095, 3, 0x22],
      [12345, 7777, 0x33],
      [MiB - 511, 1023, 0x44],
      [3 * MiB + 17, 2 * MiB + 5, 0x55],
      [64 * MiB - 100, 100, 0x66],
    ];
    const writes = ops.flatMap(([o, l, p]) => ["-c", `write -P ${p} ${o} ${l}`]);
    const reads = ops.flatMap(([o, l, p]) => ["-c", `read -P ${p} ${o} ${l}`]);
    const w = await sh(["qemu-io", "-f", "raw", ...writes, "-c", "flush", suite.srv.uri]);
    expect(w.stdout).not.toContain("failed");
    const r = await sh(["qemu-io", "-f", "raw", ...reads, suite.srv.uri]);
    expect(r.stdout).not.toContain("Pattern verification failed");
    expect(r.stdout.match(/^read /gm)?.length).toBe(ops.length);
    // The negative: a wrong pattern must be caught, or the check above proves nothing.
    const bad = await sh(["qemu-io", "-f", "raw", "-c", "read -P 0x99 12345 7777", suite.srv.uri], { allowFail: true });
    expect(bad.stdout + bad.stderr).toContain("Pattern verification failed");
  });

  test("qemu-io write-zeroes and discard read back as zeros", async () => {
    await sh(["qemu-io", "-f", "raw", "-c", "write -P 0x77 0 1M", "-c", "write -z 4096 8192", "-c", "discard 65536 65536", suite.srv.uri]);
    const r = await sh(["qemu-io", "-f", "raw", "-c", "read -P 0 4096 8192", "-c", "read -P 0 65536 65536", "-c", "read -P 0x77 0 4096", suite.srv.uri]);
    expect(r.stdout).not.toContain("Pattern verification failed");
  });

  test("fio (nbd engine) verify=crc32c at queue depth 16 over two connections", async () => {
    const out = join(suite.dir.path, "fio.json");
    await sh([
      "fio", "--name=verify", "--ioengine=nbd", `--uri=${suite.srv.uri}`, "--rw=randwrite", "--bs=4k", "--iodepth=16",
      "--numjobs=2", "--size=16M", "--offset_increment=16M", "--verify=crc32c", "--verify_fatal=1",
      "--do_verify=1", "--verify_state_save=0", "--group_reporting", "--output-format=json", `--output=${out}`,
    ]);
    const res = JSON.parse(await Bun.file(out).text());
    const job = res.jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(32 * MiB);
    expect(job.read.io_bytes).toBe(32 * MiB); // the verify pass read everything back
    const st = await suite.srv.ctl.status();
    expect(st.io.errors).toBe(0);
  });
});
