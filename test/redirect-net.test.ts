// The network redirect for real, in four network namespaces: a client, the source host,
// the destination host and a "VM" (a namespace holding the VM's old address on its
// loopback, with its own TCP stack, so moving its link from one host to the other is
// what a migration does to a VM's network). A TCP connection from the client to the old
// address must keep exchanging data through the VXLAN tunnel; DNS (a real named) must
// answer the new address; after the idle time nothing of the redirect is left.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { journalPath } from "../src/redirect/journal.ts";
import { tunnelSpec } from "../src/phases/redirect.ts";
import { spawnInNs, waitUntil } from "./helpers/netns.ts";
import { MAIN, REPO, sh, sparseFile, startServe, tempDir } from "./helpers/serve-process.ts";

const dir = tempDir("wanmig-redir-");
const o = 150 + (process.pid % 50);
const id = `${process.pid % 10000}`;
const ns = { C: `wmC${id}`, S: `wmS${id}`, D: `wmD${id}`, V: `wmV${id}` };
const ip = { client: `10.${o}.1.2`, srcLan: `10.${o}.1.1`, srcWan: `10.${o}.2.1`, dstWan: `10.${o}.2.2`, oldIp: `10.${o}.9.10`, newIp: `10.${o}.4.10`, dstVm: `10.${o}.4.1` };
const procs: Subprocess[] = [];
const PROBE = join(REPO, "test", "helpers", "tcp-probe.ts");
const DNS_PORT = 5300 + (process.pid % 600);

const inNs = (n: string, ...argv: string[]) => sh(["ip", "netns", "exec", n, ...argv]);
const ipIn = (n: string, ...argv: string[]) => sh(["ip", "-n", n, ...argv]);

const spawnIn = (n: string, argv: string[], what: string) => spawnInNs(n, argv, what, procs);


beforeAll(async () => {
  for (const n of Object.values(ns)) await sh(["ip", "netns", "add", n]);
  const veth = async (a: string, aDev: string, b: string, bDev: string) => {
    await sh(["ip", "link", "add", `${aDev}${id}`, "type", "veth", "peer", "name", `${bDev}${id}`]);
    await sh(["ip", "link", "set", `${aDev}${id}`, "netns", a]);
    await sh(["ip", "link", "set", `${bDev}${id}`, "netns", b]);
  };
  await veth(ns.C, "c0", ns.S, "s0");
  await veth(ns.S, "s1", ns.D, "d1");
  await veth(ns.V, "v0", ns.S, "s2");
  await veth(ns.V, "v1", ns.D, "d2");
  const addr = (n: string, dev: string, cidr: string) => ipIn(n, "addr", "add", cidr, "dev", `${dev}${id}`).then(() => ipIn(n, "link", "set", `${dev}${id}`, "up"));
  for (const n of Object.values(ns)) await ipIn(n, "link", "set", "lo", "up");
  await addr(ns.C, "c0", `${ip.client}/24`);
  await addr(ns.S, "s0", `${ip.srcLan}/24`);
  await addr(ns.S, "s1", `${ip.srcWan}/24`);
  await addr(ns.D, "d1", `${ip.dstWan}/24`);
  await addr(ns.V, "v0", `10.${o}.3.2/24`);
  await addr(ns.S, "s2", `10.${o}.3.1/24`);
  await addr(ns.D, "d2", `${ip.dstVm}/24`); // the VM's side of the new host, waiting for it
  // The VM: its old address on its loopback (no dummy module here), reached through the source host.
  await ipIn(ns.V, "addr", "add", `${ip.oldIp}/32`, "dev", "lo");
  await ipIn(ns.V, "route", "add", "default", "via", `10.${o}.3.1`);
  await ipIn(ns.C, "route", "add", "default", "via", ip.srcLan);
  await ipIn(ns.S, "route", "add", `${ip.oldIp}/32`, "via", `10.${o}.3.2`);
  await ipIn(ns.S, "route", "add", `10.${o}.4.0/24`, "via", ip.dstWan);
  await inNs(ns.S, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"); // the source host routes for its VMs already
}, 60_000);

afterAll(async () => {
  for (const p of procs) p.kill("SIGKILL");
  for (const n of Object.values(ns)) await sh(["ip", "netns", "del", n], { allowFail: true });
  dir.remove();
});

/** A real named in the source host's namespace, serving example.test with a TSIG key allowed to update web1. */
async function startNamed(where = ns.S, tag = "named"): Promise<{ keyFile: string; dig(): Promise<string> }> {
  const d = join(dir.path, tag);
  await sh(["mkdir", "-p", d]);
  const secret = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64");
  const keyFile = join(d, "ddns.key");
  writeFileSync(keyFile, `key "wanmig-ddns" { algorithm hmac-sha256; secret "${secret}"; };\n`);
  writeFileSync(
    join(d, "named.conf"),
    `options { directory "${d}"; listen-on port ${DNS_PORT} { 127.0.0.1; }; listen-on-v6 { none; }; pid-file "${d}/named.pid"; recursion no; dnssec-validation no; };\n` +
      `include "${keyFile}";\nzone "example.test" { type primary; file "${d}/example.test.zone"; update-policy { grant wanmig-ddns name web1.example.test A; }; };\n`,
  );
  writeFileSync(join(d, "example.test.zone"), `$TTL 60\n@ IN SOA ns.example.test. admin.example.test. 1 60 60 600 60\n@ IN NS ns.example.test.\nns IN A 127.0.0.1\nweb1 IN A ${ip.oldIp}\n`);
  const named = spawnIn(where, ["named", "-g", "-c", join(d, "named.conf")], "named");
  await named.log.waitFor("all zones loaded", 20_000);
  return { keyFile, dig: async () => (await inNs(where, "dig", "@127.0.0.1", "-p", String(DNS_PORT), "web1.example.test", "A", "+short")).stdout.trim() };
}

describe("redirect with --tunnel vxlan, between network namespaces", () => {
  test("an open TCP connection survives the move; DNS answers the new address; after the idle time nothing is left on either host", async () => {
    const named = await startNamed();
    expect(await named.dig()).toBe(ip.oldIp);
    const server = spawnIn(ns.V, [process.execPath, PROBE, "server", ip.oldIp, "7777"], "echo server");
    await waitUntil(() => server.out().includes("listening"), "the echo server");
    const client = spawnIn(ns.C, [process.execPath, PROBE, "client", ip.oldIp, "7777"], "probe client");
    await waitUntil(() => client.out().includes("connected"), "the client");
    const echoes = () => Number(/"echoes":(\d+)\}\n$/.exec(client.out())?.[1] ?? 0);
    await waitUntil(() => echoes() > 10, "echoes before the move");

    const a = join(dir.path, "A");
    const b = join(dir.path, "B");
    await sh(["mkdir", "-p", a, b]);
    const image = join(a, "vm.img");
    await sparseFile(image, 8 * 1024 * 1024);
    const srv = await startServe({ image, runDir: a });
    procs.push(srv.proc);
    const dest = spawnIn(ns.D, [process.execPath, MAIN, "dest", "--name", "vm", "--image", join(b, "vm.img"), "--run-dir", b, "--listen", `${ip.dstWan}:7200`, "--insecure", "--json", "--vm-dev", `d2${id}`], "dest");
    await dest.log.waitFor("listening on");
    const source = spawnIn(
      ns.S,
      [
        process.execPath, MAIN, "source", "--name", "vm", "--run-dir", a, "--to", `${ip.dstWan}:7200`, "--insecure", "--json",
        "--old-ip", ip.oldIp, "--new-ip", ip.newIp, "--tunnel", "vxlan", "--tunnel-idle", "2s",
        "--dns-name", "web1.example.test", "--dns-server", `127.0.0.1:${DNS_PORT}`, "--dns-key", named.keyFile, "--dns-ttl", "5",
      ],
      "source",
    );
    // The VM moves once both tunnel ends are up: its link leaves the source host for the destination host.
    await source.log.waitFor("up at both ends");
    await ipIn(ns.S, "link", "del", `s2${id}`);
    await ipIn(ns.V, "addr", "add", `${ip.newIp}/24`, "dev", `v1${id}`);
    await ipIn(ns.V, "link", "set", `v1${id}`, "up");
    await ipIn(ns.V, "route", "replace", "default", "via", ip.dstVm);

    const events = () => source.out().trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    await waitUntil(() => events().some((e) => e.event === "dns-updated"), "the DNS update", 60_000);
    const handoffAt = events().find((e) => e.phase === "handoff")!.at as number;
    await waitUntil(async () => (await named.dig()) === ip.newIp, "DNS answering the new address", 10_000);
    const dnsAnsweredAfterMs = Date.now() - handoffAt;

    // The same connection goes on through the tunnel.
    const before = echoes();
    await Bun.sleep(2000);
    expect(echoes()).toBeGreaterThan(before + 20);
    const retrans = (await inNs(ns.C, "ss", "-tin", "dst", ip.oldIp)).stdout.match(/retrans:\d+\/(\d+)/)?.[1] ?? "0";
    client.proc.kill("SIGTERM");
    await client.proc.exited;
    const probe = JSON.parse(client.out().trim().split("\n").find((l) => l.includes('"sent"'))!);
    const stoppedAt = Date.now();
    expect(probe.broke).toBeNull();

    // Idle for 2 s: both ends tear down, and say when the last packet went through.
    expect(await source.proc.exited).toBe(0);
    const srcTeardown = events().find((e) => e.event === "redirect-teardown")!;
    await waitUntil(() => dest.out().includes("redirect-teardown"), "the destination's teardown", 15_000);
    const dstTeardown = JSON.parse(dest.out().trim().split("\n").find((l) => l.includes("redirect-teardown"))!);
    const iface = tunnelSpec("vm", { mode: "vxlan", oldIp: ip.oldIp, idleMs: 0 }, "", "").iface;
    const table = String(tunnelSpec("vm", { mode: "vxlan", oldIp: ip.oldIp, idleMs: 0 }, "", "").table);
    for (const n of [ns.S, ns.D]) {
      expect((await sh(["ip", "-n", n, "link", "show", iface], { allowFail: true })).code).not.toBe(0);
      expect((await ipIn(n, "rule", "show")).stdout).not.toContain(`lookup ${table}`);
      expect((await ipIn(n, "route", "show", "table", "all")).stdout).not.toContain(ip.oldIp);
    }
    expect(existsSync(journalPath(a, "vm"))).toBe(false);
    expect(existsSync(journalPath(b, "vm"))).toBe(false);
    console.log(
      `redirect: connection outage (longest gap of a 50 ms probe) ${probe.longestGapMs} ms, ${probe.sent} probes, ${probe.echoes} echoes, ` +
        `${retrans} TCP retransmissions; hand-off to DNS answering the new address ${dnsAnsweredAfterMs} ms; ` +
        `teardown after the last packet: source ${(srcTeardown.at as number) - (srcTeardown.lastPacketAt as number)} ms, destination ${dstTeardown.at - dstTeardown.lastPacketAt} ms ` +
        `(client stopped ${stoppedAt - handoffAt} ms after the hand-off)`,
    );
    dest.proc.kill("SIGTERM");
  }, 120_000);
});

describe("dynamic DNS against a real named", () => {
  test("a wrong TSIG key is refused by named and reported as such; the record is unchanged", async () => {
    const named = await startNamed(ns.D, "named-wrongkey");
    const wrongKey = join(dir.path, "wrong.key");
    writeFileSync(wrongKey, `key "wanmig-ddns" { algorithm hmac-sha256; secret "${Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64")}"; };\n`);
    const script = join(dir.path, "update.ts");
    writeFileSync(
      script,
      `import { updateDns } from ${JSON.stringify(join(REPO, "src", "redirect", "dns.ts"))};\n` +
        `import { logger } from ${JSON.stringify(join(REPO, "src", "log.ts"))};\n` +
        `await updateDns({ name: "web1.example.test", server: "127.0.0.1", port: ${DNS_PORT}, keyFile: ${JSON.stringify(wrongKey)}, ttl: 5 }, ${JSON.stringify(ip.oldIp)}, "10.0.0.99", logger("t")).then(() => console.log("updated"), (e) => console.log("ERR " + e.message));\n`,
    );
    // nsupdate runs where named is (the destination host's namespace, its loopback).
    const out = (await inNs(ns.D, process.execPath, script)).stdout;
    expect(out).toContain("ERR DNS update of web1.example.test to 10.0.0.99: the DNS server refused the TSIG key");
    expect(await named.dig()).toBe(ip.oldIp);
  }, 60_000);
});
