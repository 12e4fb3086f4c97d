// serve --max-request: the NBD maximum a serve advertises, what real clients do with it,
// and the refusal of a request above it. It bounds what a VM holds in flight (issue 33).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { MAIN, randomFile, sh, sparseFile, startServe, tempDir, type ServeHandle } from "./helpers/serve-process.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
let dir: ReturnType<typeof tempDir>;
let srv: ServeHandle;

beforeAll(async () => {
  dir = tempDir();
  await sparseFile(join(dir.path, "disk.img"), 64 * MiB);
  srv = await startServe({ image: join(dir.path, "disk.img"), runDir: dir.path, args: ["--max-request", "256KiB"] });
});
afterAll(async () => {
  await srv?.stop();
  dir?.remove();
});

describe("serve --max-request", () => {
  test("is the maximum block size clients are told, and status shows it", async () => {
    const info = JSON.parse((await sh(["nbdinfo", "--json", srv.uri])).stdout);
    expect(info.exports[0].block_size_maximum).toBe(256 * KiB);
    expect((await srv.ctl.status()).maxRequest).toBe(256 * KiB);
  });

  test("QEMU's client splits larger writes at it: 8 MiB of random data goes in and reads back identical", async () => {
    const src = join(dir.path, "random.bin");
    await randomFile(src, 8 * MiB);
    await sh(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 8M", "-c", "flush", srv.uri]);
    await sh(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 8M", srv.uri]);
    const before = (await srv.ctl.status()).io;
    await sh(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-S", "0", src, srv.uri]);
    const cmp = await sh(["qemu-img", "compare", "-f", "raw", "-F", "raw", src, `${srv.uri}`]);
    expect(cmp.stdout).toContain("Images are identical");
    const after = (await srv.ctl.status()).io;
    // None above the maximum: 8 MiB in at least 32 requests.
    expect(after.writes - before.writes).toBeGreaterThanOrEqual(32);
    expect(after.errors).toBe(before.errors);
  });

  test("a request above it is refused with EINVAL and the connection goes on", async () => {
    // libnbd checks payloads against the server's maximum itself; strict mode off sends it anyway.
    const py = `
import nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(${JSON.stringify(srv.uri)})
try:
    h.pwrite(b"x" * (1024 * 1024), 0)
    print("accepted")
except nbd.Error as e:
    print("refused", e.errno)
h.pwrite(b"y" * (256 * 1024), 0)
print("ok", h.pread(4, 0))
`;
    const { stdout } = await sh(["/usr/bin/python3", "-c", py]);
    expect(stdout).toContain("refused EINVAL");
    expect(stdout).toContain("ok bytearray(b'yyyy')");
  });

  test("a value outside 64KiB..32MiB, or not a multiple of 4KiB, is a one-line usage error", async () => {
    for (const bad of ["1000", "32KiB", "64MiB", "100000"]) {
      const p = Bun.spawn([process.execPath, MAIN, "serve", "--image", join(dir.path, "disk.img"), "--name", "bad", "--run-dir", dir.path, "--max-request", bad], { stderr: "pipe", stdout: "pipe" });
      const err = await new Response(p.stderr).text();
      expect(await p.exited).toBe(2);
      expect(err).toContain(`--max-request ${bad}: must be a multiple of 4KiB from 64KiB to 32MiB`);
      expect(err).not.toContain("    at ");
    }
  });
});
