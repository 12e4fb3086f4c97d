// The redirect's commands, pinned by argv through PATH shims for ip, sysctl and nsupdate
// (test/fixtures/netbin): ipip and gre cannot run on this kernel (no modules), and every
// change must come with its exact undo, run backwards, also after a crash.
import { afterAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { logger } from "../src/log.ts";
import { updateDns } from "../src/redirect/dns.ts";
import { journalPath, recoverStaleJournal } from "../src/redirect/journal.ts";
import type { TunnelSpec } from "../src/redirect/plan.ts";
import { Redirect } from "../src/redirect/redirect.ts";
import { REPO, tempDir } from "./helpers/serve-process.ts";

const dir = tempDir("wanmig-redirect-");
const shimLog = join(dir.path, "shim.log");
const saved = { PATH: process.env.PATH };
process.env.PATH = `${join(REPO, "test", "fixtures", "netbin")}:${process.env.PATH}`;
process.env.WANMIG_SHIM_LOG = shimLog;
afterAll(() => {
  process.env.PATH = saved.PATH;
  delete process.env.WANMIG_SHIM_LOG;
  delete process.env.WANMIG_SHIM_FAIL;
  dir.remove();
});
beforeEach(() => {
  writeFileSync(shimLog, "");
  delete process.env.WANMIG_SHIM_FAIL;
});

const log = logger("test");
const at = { runDir: dir.path, name: "web1" };
const spec = (mode: TunnelSpec["mode"]): TunnelSpec => ({ mode, iface: "wmabc", local: "198.51.100.1", remote: "203.0.113.2", oldIp: "192.0.2.10", vni: 4242, table: 5242 });

/** The commands the shims saw (the read-only ones left out). */
function calls(): string[] {
  return readFileSync(shimLog, "utf8")
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { cmd: string; argv: string[] })
    .filter((c) => !(c.cmd === "sysctl" && c.argv[0] === "-n"))
    .map((c) => [c.cmd, ...c.argv].join(" "));
}

describe("tunnel ends by argv", () => {
  test("ipip at the source: forwarding, the tunnel, then the old address routed into it; undone backwards", async () => {
    const r = await Redirect.source(spec("ipip"), at, log);
    await r.routeOldAddress();
    expect(calls()).toEqual([
      "sysctl -q -w net.ipv4.ip_forward=1",
      "ip tunnel add wmabc mode ipip local 198.51.100.1 remote 203.0.113.2",
      "ip link set wmabc up",
      "ip route replace 192.0.2.10/32 dev wmabc",
    ]);
    expect(JSON.parse(readFileSync(journalPath(dir.path, "web1"), "utf8")).changes).toHaveLength(4);
    writeFileSync(shimLog, "");
    await r.teardown();
    expect(calls()).toEqual(["ip route del 192.0.2.10/32", "ip link set wmabc down", "ip link del wmabc", "sysctl -q -w net.ipv4.ip_forward=0"]);
    expect(existsSync(journalPath(dir.path, "web1"))).toBe(false);
  });

  test("gre at the destination: delivery to the VM, replies from the old address back through the tunnel (policy rule)", async () => {
    const r = await Redirect.dest(spec("gre"), "vmbr0", at, log);
    expect(calls()).toEqual([
      "sysctl -q -w net.ipv4.ip_forward=1",
      "sysctl -q -w net.ipv4.conf.all.rp_filter=0",
      "ip tunnel add wmabc mode gre local 198.51.100.1 remote 203.0.113.2",
      "ip link set wmabc up",
      "sysctl -q -w net.ipv4.conf.wmabc.rp_filter=0",
      "ip route replace 192.0.2.10/32 dev vmbr0",
      "ip route replace default dev wmabc table 5242",
      "ip rule add from 192.0.2.10/32 lookup 5242 pref 5242",
    ]);
    writeFileSync(shimLog, "");
    await r.teardown();
    expect(calls()).toEqual([
      "ip rule del pref 5242",
      "ip route flush table 5242",
      "ip route del 192.0.2.10/32 dev vmbr0",
      "sysctl -q -w net.ipv4.conf.wmabc.rp_filter=0",
      "ip link set wmabc down",
      "ip link del wmabc",
      "sysctl -q -w net.ipv4.conf.all.rp_filter=0",
      "sysctl -q -w net.ipv4.ip_forward=0",
    ]);
  });

  test("vxlan: link-local inner addresses, routes via the peer's", async () => {
    const r = await Redirect.source(spec("vxlan"), at, log);
    await r.routeOldAddress();
    expect(calls()).toEqual([
      "sysctl -q -w net.ipv4.ip_forward=1",
      "ip link add wmabc type vxlan id 4242 local 198.51.100.1 remote 203.0.113.2 dstport 4789",
      "ip addr add 169.254.242.1/30 dev wmabc",
      "ip link set wmabc up",
      "ip route replace 192.0.2.10/32 via 169.254.242.2 dev wmabc",
    ]);
    await r.teardown();
  });

  test("a kernel without the ipip module: the error names the command and ip's words; what was done is undone", async () => {
    process.env.WANMIG_SHIM_FAIL = "ip tunnel add";
    const err = await Redirect.source(spec("ipip"), at, log).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    const text = `${(err as Error).message} ${((err as Error).cause as Error).message}`;
    expect(text).toContain("create ipip tunnel wmabc to 203.0.113.2 failed");
    expect(text).toContain('ip tunnel add wmabc mode ipip local 198.51.100.1 remote 203.0.113.2 exited 1: add tunnel "tunl0" failed: No such device');
    expect(calls().slice(-2)).toEqual(["ip link del wmabc", "sysctl -q -w net.ipv4.ip_forward=0"]);
    expect(existsSync(journalPath(dir.path, "web1"))).toBe(false);
  });

  test("after a crash: a journal whose process is gone is undone on the next start", async () => {
    const dead = Bun.spawn(["true"]);
    await dead.exited;
    const changes = [
      { what: "forwarding", apply: ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], undo: ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"] },
      { what: "tunnel", apply: ["ip", "link", "add", "wmabc", "type", "vxlan"], undo: ["ip", "link", "del", "wmabc"] },
    ];
    writeFileSync(journalPath(dir.path, "web1"), JSON.stringify({ name: "web1", role: "dest", pid: dead.pid, createdAt: "x", iface: "wmabc", changes }));
    await recoverStaleJournal(dir.path, "web1", log);
    expect(calls()).toEqual(["ip link del wmabc", "sysctl -q -w net.ipv4.ip_forward=0"]);
    expect(existsSync(journalPath(dir.path, "web1"))).toBe(false);
    // A journal whose process lives (pid 1 always does) is left alone.
    writeFileSync(journalPath(dir.path, "web1"), JSON.stringify({ name: "web1", role: "dest", pid: 1, createdAt: "x", changes }));
    writeFileSync(shimLog, "");
    await recoverStaleJournal(dir.path, "web1", log);
    expect(calls()).toEqual([]);
  });
});

describe("DNS update by argv", () => {
  test("nsupdate -k KEY with the old record deleted and the new one added, one update", async () => {
    await updateDns({ name: "web1.example.test", server: "127.0.0.1", port: 5353, keyFile: "/etc/wanmig/ddns.key", ttl: 30 }, "192.0.2.10", "203.0.113.10", log);
    const line = JSON.parse(readFileSync(shimLog, "utf8").trim()) as { argv: string[]; stdin: string };
    expect(line.argv).toEqual(["-k", "/etc/wanmig/ddns.key"]);
    expect(line.stdin.split("\n")).toEqual(["server 127.0.0.1 5353", "update delete web1.example.test A 192.0.2.10", "update add web1.example.test 30 A 203.0.113.10", "send"]);
  });

  test("a wrong key is named as such", async () => {
    process.env.WANMIG_SHIM_FAIL = "nsupdate";
    const err = await updateDns({ name: "web1.example.test", server: "127.0.0.1", port: 53, keyFile: "k", ttl: 30 }, undefined, "203.0.113.10", log).catch((e: Error) => e);
    expect((err as Error).message).toContain("the DNS server refused the TSIG key");
  });
});

describe("the tunnel's ends", () => {
  test("a migration connection over loopback (a relay, an SSH forward) names no host: refused before anything is set up, the VM's disk writable at the source", async () => {
    const { hosts, removeHosts, source, withPair, writable } = await import("./helpers/migration.ts");
    try {
      const h = await hosts(4, 4);
      await withPair(h, async ({ srv, dst }) => {
        const run = await source(h, dst.port, ["--insecure", "--old-ip", "192.0.2.10"]);
        expect(run.code).toBe(5);
        expect(run.stderr).toContain("the migration's connection is over loopback (local 127.0.0.1)");
        expect(run.stderr).toContain("pass --tunnel-local ADDR and --tunnel-remote ADDR");
        expect((await srv.ctl.status()).mode).toBe("normal");
        expect(await writable(srv.socket)).toBe(true);
      });
    } finally {
      removeHosts();
    }
  });
});
