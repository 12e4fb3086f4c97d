// --hypervisor xl against a PATH shim (test/fixtures/bin/xl: no Xen host can exist here)
// that logs its argv and plays xl's real outputs, plus Debian's real xl on this Xen-less
// host. What is pinned: the argv contract, the order (xl migrate returns, then the fence,
// then the destination verifies, then xl unpause), and what each failure leaves behind.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { ExitCode } from "../src/errors.ts";
import { xlDomainState } from "../src/hypervisor/xl.ts";
import { hosts, MiB, removeHosts, source, spawnSource, withPair, writable, writer } from "./helpers/migration.ts";
import { sh } from "./helpers/serve-process.ts";
import { shimCalls, withToolShim } from "./helpers/tool-shim.ts";

afterAll(() => removeHosts());

const xlCalls = shimCalls;
const withXlShim = (scenario: string, body: Parameters<typeof withToolShim>[2]) => withToolShim("xl", scenario, body);

const XL_DEST = ["--insecure", "--hypervisor", "xl", "--domain", "vm1"];

describe("xl (Xen), through a PATH shim", () => {
  test("xl migrate -p with -s and -C, then the fence, then the destination verifies and runs xl unpause", async () => {
    await withXlShim("ok", ({ h, log }) => withPair(h, async ({ srv, dst }) => {
      const w = await writer(srv.socket, 4 * MiB);
      const run = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1", "--xl-ssh", "ssh -p 2222", "--xl-config", "/etc/xen/vm1.cfg", "--json"]);
      await w.stop();
      expect(run.code).toBe(0);
      await dst.waitFor("the VM runs here (xl)");
      const calls = xlCalls(log);
      expect(calls.map((c) => c.argv)).toEqual([
        ["list", "vm1"],
        ["migrate", "-p", "-s", "ssh -p 2222", "-C", "/etc/xen/vm1.cfg", "vm1", "127.0.0.1"],
        ["unpause", "vm1"],
      ]);
      // The order that keeps the VM in one place: the domain leaves, then the fence, then unpause.
      const err = run.stderr;
      expect(err.indexOf("point of no return: the VM has left (xl)")).toBeGreaterThan(-1);
      expect(err.indexOf("point of no return: the VM has left (xl)")).toBeLessThan(err.indexOf("source fenced"));
      expect(dst.stderr().indexOf("image verified")).toBeLessThan(dst.stderr().indexOf("xl unpause vm1"));
      expect((await srv.ctl.status()).mode).toBe("fenced");
      await sh(["cmp", h.image, h.destImage]);
    }, XL_DEST));
  });

  test('a local receiver: --xl-ssh "" runs --xl-host as the whole transport, which must say migrate-receive -p (else a usage error, exit 2)', async () => {
    await withXlShim("ok", ({ h, log }) => withPair(h, async ({ dst }) => {
      const refused = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1", "--xl-ssh", "", "--xl-host", "xl migrate-receive"]);
      expect(refused.code).toBe(ExitCode.usage);
      expect(refused.stderr).toContain('with --xl-ssh "" the --xl-host command must run xl migrate-receive -p');
      expect(xlCalls(log)).toEqual([]);
      const run = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1", "--xl-ssh", "", "--xl-host", "xl migrate-receive -p"]);
      expect(run.code, run.stderr).toBe(0);
      expect(xlCalls(log).map((c) => c.argv)[1]).toEqual(["migrate", "-p", "-s", "", "vm1", "xl migrate-receive -p"]);
    }, XL_DEST));
  });

  test("--mode freeze-and-copy is refused for xl (its domain would run at B before its disk is there): exit 2, nothing fenced, xl not called", async () => {
    await withXlShim("ok", ({ h, log }) => withPair(h, async ({ srv, dst }) => {
      const run = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1", "--mode", "freeze-and-copy"]);
      expect(run.code).toBe(ExitCode.usage);
      expect(run.stderr).toContain("--mode freeze-and-copy cannot move a xl domain");
      expect(xlCalls(log)).toEqual([]);
      expect((await srv.ctl.status()).mode).toBe("normal");
      expect(await writable(srv.socket)).toBe(true);
    }, XL_DEST));
  });

  test("xl migrate fails and xl list shows the domain running at the source: its disk unfenced and writable, no unpause anywhere (exit 5)", async () => {
    await withXlShim("migrate-fails", ({ h, log }) => withPair(h, async ({ srv, dst }) => {
      const run = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1"]);
      expect(run.code).toBe(ExitCode.abortedSafely);
      expect(run.stderr).toContain("xl migrate failed and resumed the domain at the source; domain vm1 runs here (xl list: -b----, blocked: running, idle)");
      expect(run.stderr).toContain("Migration failed due to problems at target"); // xl's own words kept
      expect(xlCalls(log).map((c) => c.argv)).toEqual([["list", "vm1"], ["migrate", "-p", "vm1", "127.0.0.1"], ["list", "vm1"]]);
      const st = await srv.ctl.status();
      expect(st.mode).toBe("normal");
      expect(st.recording.active).toBe(false);
      expect(await writable(srv.socket)).toBe(true);
      expect(xlCalls(log).some((c) => c.argv[0] === "unpause")).toBe(false);
      expect(await dst.proc.exited).not.toBe(0); // told the source gave up; it does not wait for a resume
    }, XL_DEST));
  });

  // Seen on nested Xen: the guest did not suspend in time, xl gave up without resuming it, and
  // xl list showed it shut down (---sr-). Exit 5 would say it runs at the source: it runs nowhere.
  test("xl migrate fails to suspend the domain and leaves it shut down (---sr-) or paused at the source: exit 6 naming the state, never 5; the disk unfenced and writable there, no unpause anywhere", async () => {
    for (const [scenario, says, restart] of [
      ["suspend-fails", "not running here (xl list: ---sr-, shut down for reboot): it runs on neither host", "`xl destroy vm1`, then `xl create` of its config, brings it back here"],
      ["suspend-fails-paused", "not running here (xl list: --p---, paused): it runs on neither host", "`xl unpause vm1` brings it back here"],
    ]) {
      await withXlShim(scenario!, ({ h, log }) => withPair(h, async ({ srv, dst }) => {
        const run = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1"]);
        expect(run.code, run.stderr).toBe(ExitCode.unsafeState);
        expect(run.stderr).toContain(`wanmig: migration: the migration failed and left domain vm1 ${says}`);
        expect(run.stderr).toContain("xl migrate failed: the domain did not suspend at the source, and xl does not resume it then");
        expect(run.stderr).toContain("Migration failed, failed to suspend at sender."); // xl's own words kept
        expect(run.stderr).toContain(`hint: ${restart}; its disk is still served here, writable (it was never fenced), and the destination never runs a copy`);
        expect(run.stderr).not.toContain("aborted before the point of no return");
        expect(xlCalls(log).map((c) => c.argv)).toEqual([["list", "vm1"], ["migrate", "-p", "vm1", "127.0.0.1"], ["list", "vm1"]]);
        const st = await srv.ctl.status();
        expect(st.mode).toBe("normal");
        expect(st.recording.active).toBe(false);
        expect(await writable(srv.socket)).toBe(true);
        expect(await dst.proc.exited).not.toBe(0); // told the source gave up: it never unpauses a copy
      }, XL_DEST));
    }
  });

  // xl cannot cancel a migration: given up on while xl migrate runs (here Ctrl-C; a
  // destination's error or a lost link alike), xl is stopped and waited for, then asked.
  test("the source gives up while xl migrate runs: xl is stopped, then xl list decides: running, exit 130 as for any Ctrl-C; suspended (---ss-), exit 6 naming it; the disk unfenced and writable either way", async () => {
    for (const [scenario, code, says] of [
      ["ok", 130, "domain vm1 runs here (xl list: -b----"],
      ["stopped-suspended", ExitCode.unsafeState, "the migration was given up and left domain vm1 not running here (xl list: ---ss-, shut down for suspend): it runs on neither host"],
    ] as const) {
      process.env.WANMIG_XL_MIGRATE_SECONDS = "60";
      try {
        await withXlShim(scenario, ({ h, log }) => withPair(h, async ({ srv, dst }) => {
          const run = spawnSource(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1"]);
          for (let i = 0; !xlCalls(log).some((c) => c.argv[0] === "migrate"); i++) {
            if (i > 1500) throw new Error(`xl migrate never ran: ${run.stderr()}`);
            await Bun.sleep(20);
          }
          const t0 = Date.now();
          run.proc.kill("SIGINT");
          const r = await run.result();
          expect(Date.now() - t0).toBeLessThan(20_000); // xl stopped, not waited out (60 s)
          expect(r.code, r.stderr).toBe(code);
          expect(r.stderr).toContain(says);
          expect(xlCalls(log).map((c) => c.argv)).toEqual([["list", "vm1"], ["migrate", "-p", "vm1", "127.0.0.1"], ["list", "vm1"]]);
          expect((await srv.ctl.status()).mode).toBe("normal");
          expect(await writable(srv.socket)).toBe(true);
          expect(xlCalls(log).some((c) => c.argv[0] === "unpause")).toBe(false);
        }, XL_DEST));
      } finally {
        delete process.env.WANMIG_XL_MIGRATE_SECONDS;
      }
    }
  });

  test("xl migrate fails and xl list then fails too: exit 6, saying the state could not be read; the disk unfenced and writable", async () => {
    await withXlShim("suspend-fails-list-fails", ({ h }) => withPair(h, async ({ srv, dst }) => {
      const run = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1"]);
      expect(run.code, run.stderr).toBe(ExitCode.unsafeState);
      expect(run.stderr).toContain("wanmig: migration: the migration failed, and domain vm1's state here could not be read: it may not be running. xl list vm1: no such Xen domain");
      expect(run.stderr).toContain("vm1 is an invalid domain identifier (rc=-6)"); // xl's words for the failed query
      expect(run.stderr).toContain("Migration failed, failed to suspend at sender."); // and for the failed migration
      expect(run.stderr).toContain("hint: look for it on both hosts (xl list)");
      expect((await srv.ctl.status()).mode).toBe("normal");
      expect(await writable(srv.socket)).toBe(true);
      expect(await dst.proc.exited).not.toBe(0);
    }, XL_DEST));
  });

  test("xl list's state column: running, blocked and runnable run; paused, shut down (with its reason), crashed and dying do not", () => {
    const list = (state: string) => `Name                                        ID   Mem VCPUs\tState\tTime(s)\n${"vm1".padEnd(40)}     7   512     1     ${state}       3.1\n`;
    expect(xlDomainState(list("r-----"))).toEqual({ flags: "r-----", runs: true, means: "running" });
    expect(xlDomainState(list("-b----"))).toEqual({ flags: "-b----", runs: true, means: "blocked: running, idle" });
    expect(xlDomainState(list("------"))).toEqual({ flags: "------", runs: true, means: "runnable" });
    expect(xlDomainState(list("--p---"))).toEqual({ flags: "--p---", runs: false, means: "paused" });
    expect(xlDomainState(list("---s--"))).toEqual({ flags: "---s--", runs: false, means: "shut down (poweroff)" });
    expect(xlDomainState(list("---sr-"))).toEqual({ flags: "---sr-", runs: false, means: "shut down for reboot" });
    expect(xlDomainState(list("---ss-"))).toEqual({ flags: "---ss-", runs: false, means: "shut down for suspend" });
    expect(xlDomainState(list("---sc-"))).toEqual({ flags: "---sc-", runs: false, means: "crashed" });
    expect(xlDomainState(list("--ps--"))).toEqual({ flags: "--ps--", runs: false, means: "shut down (poweroff)" });
    expect(xlDomainState(list("-----d"))).toEqual({ flags: "-----d", runs: false, means: "dying" });
    expect(xlDomainState("Name                                        ID   Mem VCPUs\tState\tTime(s)\n")).toBeUndefined();
  });

  test("xl says the domain state is undefined: exit 6, nothing resumed here, the operator told to check both ends", async () => {
    await withXlShim("handshake-fails", ({ h }) => withPair(h, async ({ srv, dst }) => {
      const run = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1"]);
      expect(run.code).toBe(ExitCode.unsafeState);
      expect(run.stderr).toContain("final handshake");
      expect(run.stderr).toContain("check both hosts");
      expect((await srv.ctl.status()).mode).toBe("normal"); // not fenced: the domain may be running here
    }, XL_DEST));
  });

  test("the source killed after xl migrate returned (the domain gone from here): the same command again finishes the hand-off; the destination unpauses", async () => {
    await withXlShim("ok", ({ h, log }) => withPair(h, async ({ srv, dst }) => {
      const w = await writer(srv.socket, 4 * MiB);
      const first = spawnSource(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1"], { WANMIG_TEST_KILL_AT: "source-fenced" });
      expect(await first.proc.exited).toBe(137);
      await w.stop();
      expect((await srv.ctl.status()).handoff.state).toBe("unfinished");
      process.env.WANMIG_XL_SCENARIO = "no-such-domain"; // xl migrate -p destroyed it here
      const again = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1"]);
      expect(again.stderr).toContain("the VM has left: settling it with the destination");
      expect(again.code).toBe(0);
      await dst.waitFor("the VM runs here (xl)");
      expect(xlCalls(log).map((c) => c.argv[0])).toEqual(["list", "migrate", "list", "unpause"]);
      await sh(["cmp", h.image, h.destImage]);
      expect((await srv.ctl.status()).handoff.state).toBe("moved");
    }, XL_DEST));
  });

  test("an unknown domain is refused before anything is copied or recorded", async () => {
    await withXlShim("no-such-domain", ({ h }) => withPair(h, async ({ srv, dst }) => {
      const run = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "nope"]);
      expect(run.code).toBe(ExitCode.abortedSafely);
      expect(run.stderr).toContain("no such Xen domain");
      expect((await srv.ctl.status()).recording.records).toBe(0);
      expect((await srv.ctl.status()).recording.active).toBe(false);
    }, XL_DEST));
  });

  test("xl unpause fails at the destination: the disk is verified and stays served there; the error says so", async () => {
    await withXlShim("unpause-fails", ({ h }) => withPair(h, async ({ dst }) => {
      const run = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1"]);
      expect(run.code).toBe(0);
      await dst.waitFor("start the VM by hand");
      expect(dst.stderr()).toContain("unpausing vm1");
      expect(dst.stderr()).toContain("Unpausing domain: Invalid argument"); // the shim's xl, not the host's
      expect(dst.proc.exitCode).toBeNull();
      expect(await writable(dst.socket)).toBe(true);
    }, XL_DEST));
  });
});

describe("Debian's real xl on a host without Xen", () => {
  test("the error names the cause: no Xen hypervisor here (exit 5, the disk untouched)", async () => {
    expect(existsSync("/usr/sbin/xl")).toBe(true); // xen-utils: scripts/install-deps.sh xen (npm test installs every group)
    const h = await hosts(4, 1);
    await withPair(h, async ({ srv, dst }) => {
      const run = await source(h, dst.port, ["--insecure", "--hypervisor", "xl", "--domain", "vm1"]);
      expect(run.code).toBe(ExitCode.abortedSafely);
      expect(run.stderr).toContain("no Xen hypervisor is running on this host");
      expect(run.stderr).toMatch(/Can't find hypervisor information in sysfs|cannot init xl context/); // xl's own words
      expect((await srv.ctl.status()).mode).toBe("normal");
    });
  });
});
