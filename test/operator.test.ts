// What an operator reads on a host: every serve at once (`wanmig status`), the version a
// remote `wanmig migrate` compares, and Prometheus metrics on the control socket.
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { PROTOCOL_VERSION } from "../src/net/protocol.ts";
import { RawNbd } from "./helpers/raw-nbd.ts";
import { REPO, sh, sparseFile, startServe, tempDir, wanmig } from "./helpers/serve-process.ts";

const dir = tempDir("wanmig-op-");
afterAll(() => dir.remove());

describe("operator views", () => {
  test("status without --name lists every serve in the run directory; version --json names the protocol", async () => {
    const run = join(dir.path, "run");
    await sparseFile(join(dir.path, "a.img"), 1 << 20);
    await sparseFile(join(dir.path, "b.img"), 2 << 20);
    const a = await startServe({ image: join(dir.path, "a.img"), runDir: run, name: "web1" });
    const b = await startServe({ image: join(dir.path, "b.img"), runDir: run, name: "db1" });
    try {
      const text = await wanmig(["status", "--run-dir", run]);
      expect(text.code).toBe(0);
      expect(text.stdout).toContain("web1: normal, 0 client(s)");
      expect(text.stdout).toContain("db1: normal, 0 client(s)");
      const json = JSON.parse((await wanmig(["status", "--run-dir", run, "--json"])).stdout) as { name: string; size: number }[];
      expect(json.map((s) => [s.name, s.size]).sort()).toEqual([["db1", 2 << 20], ["web1", 1 << 20]]);
      expect(JSON.parse((await wanmig(["version", "--json"])).stdout)).toMatchObject({ protocol: PROTOCOL_VERSION });
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test("GET /metrics on the control socket: Prometheus text whose counters move with the I/O", async () => {
    const run = join(dir.path, "run2");
    await sparseFile(join(dir.path, "m.img"), 1 << 20);
    const srv = await startServe({ image: join(dir.path, "m.img"), runDir: run, name: "web1" });
    try {
      const c = await RawNbd.connect(srv.socket);
      await c.go();
      expect(await c.write(0, Buffer.alloc(4096, 1))).toBe(0);
      expect(await c.write(4096, Buffer.alloc(4096, 2))).toBe(0);
      c.disconnect();
      const res = await fetch("http://localhost/metrics", { unix: join(run, "web1.ctl") } as RequestInit);
      expect(res.headers.get("content-type")).toContain("text/plain");
      const text = await res.text();
      expect(text).toContain("# TYPE wanmig_io_writes_total counter");
      expect(text).toMatch(/^wanmig_io_writes_total\{name="web1",disk="disk0"\} 2$/m);
      expect(text).toMatch(/^wanmig_io_written_bytes_total\{name="web1",disk="disk0"\} 8192$/m);
      expect(text).toMatch(/^wanmig_fenced\{name="web1"\} 0$/m);
      // Every sample line is NAME{labels} NUMBER, every family has HELP and TYPE.
      for (const line of text.trim().split("\n")) expect(line).toMatch(/^(# (HELP|TYPE) wanmig_\w+ .+|wanmig_\w+\{name="web1"(,disk="disk0")?\} \d+)$/);
    } finally {
      await srv.stop();
    }
  });
});

describe("installing on a host", () => {
  test("scripts/install.sh puts the binary, a wanmig-serve@ unit and bash completion in place; the completion completes", async () => {
    await sh(["npm", "run", "--silent", "build"], { env: { PATH: `${join(REPO, "node_modules", ".bin")}:${process.env.PATH}` } });
    const root = join(dir.path, "root");
    await sh(["bash", join(REPO, "scripts", "install.sh")], { env: { DESTDIR: root } });
    expect((await sh([join(root, "usr/local/bin/wanmig"), "version"])).stdout).toMatch(/^wanmig \S+ \(protocol \d+\)/);
    const unit = readFileSync(join(root, "etc/systemd/system/wanmig-serve@.service"), "utf8");
    expect(unit).toContain("ExecStart=/usr/local/bin/wanmig serve --name %i --image ${IMAGE} --run-dir /run/wanmig $WANMIG_SERVE_ARGS");
    expect(unit).toContain("EnvironmentFile=/etc/wanmig/%i.env");
    // The sandbox, as systemd itself scores it (0 safe .. 10 unsafe; the bare unit scored 9.6).
    for (const d of ["ProtectSystem=strict", "ReadWritePaths=/run/wanmig -/var/lib/wanmig", "PrivateTmp=yes", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n"]) expect(unit).toContain(d);
    {
      const instance = join(dir.path, "wanmig-serve@vm.service");
      await Bun.write(instance, unit);
      const score = await sh(["systemd-analyze", "security", "--offline=true", "--threshold=20", instance], { allowFail: true });
      expect(score.code, score.stdout + score.stderr).toBe(0);
      expect(score.stdout).toMatch(/Overall exposure level for wanmig-serve@vm\.service: [01]\.\d OK/);
    }
    const complete = (words: string[]) =>
      sh(["bash", "-c", `source ${join(root, "etc/bash_completion.d/wanmig")}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}; _wanmig; echo "\${COMPREPLY[@]}"`]).then((r) => r.stdout.trim());
    expect(await complete(["wanmig", "mig"])).toBe("migrate");
    expect(await complete(["wanmig", "migrate", "--dry"])).toBe("--dry-run");
    expect(await complete(["wanmig", "source", "--hypervisor", ""])).toBe("none xl qemu libvirt");
  }, 120_000);
});
