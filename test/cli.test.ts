// The binary as an operator meets it: one file, --version, --help, exit codes.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { ExitCode } from "../src/errors.ts";
import { REPO, sh, sparseFile, startServe, tempDir, wanmig } from "./helpers/serve-process.ts";

let dir: ReturnType<typeof tempDir>;
beforeAll(() => {
  dir = tempDir();
});
afterAll(() => dir?.remove());

describe("compiled binary", () => {
  test("npm run build makes one executable that runs without Bun on PATH", async () => {
    await sh(["npm", "run", "--silent", "build"], { env: { PATH: `${join(REPO, "node_modules", ".bin")}:${process.env.PATH}` } });
    const bin = join(dir.path, "wanmig");
    copyFileSync(join(REPO, "dist", "wanmig"), bin); // away from node_modules, alone
    const env = { PATH: "/usr/bin:/bin", HOME: dir.path };
    const v = await sh([bin, "--version"], { env });
    expect(v.stdout.trim()).toMatch(/^wanmig \d+\.\d+\.\d+$/);
    const h = await sh([bin, "--help"], { env });
    expect(h.stdout).toContain("serve");
    expect(h.stdout).toContain("EXIT STATUS");
    expect(h.stdout).not.toContain("\x1b["); // no colour codes when not a terminal
    const sub = await sh([bin, "serve", "--help"], { env });
    expect(sub.stdout).toContain("--image");
  }, 120_000);
});

describe("exit codes", () => {
  test("usage errors exit 2: missing flag, unknown flag, unknown command", async () => {
    const missing = await wanmig(["serve", "--name", "x"]);
    expect(missing.code).toBe(ExitCode.usage);
    expect(missing.stderr).toContain("--image");
    const unknown = await wanmig(["serve", "--image", "x", "--name", "x", "--imgae", "y"]);
    expect(unknown.code).toBe(ExitCode.usage);
    expect(unknown.stderr).toContain("unknown option --imgae");
    const cmd = await wanmig(["frobnicate"]);
    expect(cmd.code).toBe(ExitCode.usage);
  });

  test("a flag that takes one value, given twice, is a usage error on every command (--image is once per disk)", async () => {
    for (const argv of [
      ["serve", "--name", "x", "--name", "y", "--image", "a.img"],
      ["serve", "--name", "x", "--image", "a.img", "--run-dir=/a", "--run-dir", "/b"],
      ["source", "--name", "x", "--to", "127.0.0.1:1", "--to", "127.0.0.1:2", "--insecure"],
      ["dest", "--name", "x", "--image", "a.img", "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:1", "--insecure"],
      ["migrate", "x", "--to", "ssh://a", "--remote-run-dir", "/a", "--remote-run-dir", "/b"],
    ]) {
      const r = await wanmig(argv);
      expect(r.code, argv.join(" ")).toBe(ExitCode.usage);
      expect(r.stderr).toMatch(/--[a-z-]+ given twice: it takes one value/);
    }
    // A switch given twice says the same thing twice: no error.
    const twice = await wanmig(["source", "--name", "x", "--run-dir", dir.path, "--to", "127.0.0.1:1", "--insecure", "--insecure", "--compress", "gzip"]);
    expect(twice.stderr).not.toContain("given twice");
  });

  test("--compress takes auto, none, zstd or zstd:1-19; anything else is a usage error before any connection", async () => {
    for (const bad of ["zstd:25", "zstd:0", "gzip", "zstd:"]) {
      const r = await wanmig(["source", "--name", "x", "--run-dir", dir.path, "--to", "127.0.0.1:1", "--insecure", "--compress", bad]);
      expect(r.code).toBe(ExitCode.usage);
      expect(r.stderr).toContain(`cannot read --compress "${bad}"`);
      expect(r.stderr).not.toContain("    at ");
    }
  });

  test("a missing image exits 3 with the cause and a hint", async () => {
    const r = await wanmig(["serve", "--image", join(dir.path, "nope.img"), "--name", "x", "--run-dir", dir.path]);
    expect(r.code).toBe(ExitCode.badInput);
    expect(r.stderr).toContain("cannot open image");
    expect(r.stderr).toContain("ENOENT");
    expect(r.stderr).toContain("hint:");
  });

  test("a name already served on this host exits 3 and leaves the first server alone", async () => {
    const image = join(dir.path, "a.img");
    await sparseFile(image, 1 << 20);
    const first = await startServe({ image, runDir: dir.path, name: "dup" });
    try {
      const second = await wanmig(["serve", "--image", image, "--name", "dup", "--run-dir", dir.path]);
      expect(second.code).toBe(ExitCode.badInput);
      expect(second.stderr).toContain("in use by a running server");
      expect((await first.ctl.status()).name).toBe("dup");
    } finally {
      await first.stop();
    }
  });

  test("SIGTERM stops serve cleanly and removes its sockets; a stale socket is reclaimed", async () => {
    const image = join(dir.path, "b.img");
    await sparseFile(image, 1 << 20);
    const s = await startServe({ image, runDir: dir.path, name: "sig" });
    expect(await s.stop()).toBe(0);
    expect(existsSync(join(dir.path, "sig.ctl"))).toBe(false);
    // A crash leaves the socket file behind; the next start must not be blocked by it.
    const k = await startServe({ image, runDir: dir.path, name: "sig" });
    k.proc.kill("SIGKILL");
    await k.proc.exited;
    expect(existsSync(join(dir.path, "sig.ctl"))).toBe(true);
    const again = await startServe({ image, runDir: dir.path, name: "sig" });
    expect((await again.ctl.status()).mode).toBe("normal");
    await again.stop();
  });

  test("serve over TCP answers nbdinfo", async () => {
    const image = join(dir.path, "c.img");
    await sparseFile(image, 3 << 20);
    const port = 20000 + Math.floor(Math.random() * 20000);
    const s = await startServe({ image, runDir: dir.path, name: "tcp", args: ["--nbd", `tcp:127.0.0.1:${port}`] });
    try {
      const { stdout } = await sh(["nbdinfo", "--size", `nbd://127.0.0.1:${port}/`]);
      expect(Number(stdout)).toBe(3 << 20);
    } finally {
      await s.stop();
    }
  });
});
