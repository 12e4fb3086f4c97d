// --hypervisor libvirt against a PATH shim (test/fixtures/bin/virsh: a second libvirt host
// cannot exist here) that logs its argv and plays virsh's real messages. What is pinned:
// the argv contract, the order (virsh migrate --live --suspend returns, then the fence,
// then the destination verifies, then virsh resume), and what each failure leaves behind:
// before the point of no return the domain runs at the source and its disk is writable.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { ExitCode } from "../src/errors.ts";
import { HypervisorError } from "../src/hypervisor/errors.ts";
import { LibvirtSource } from "../src/hypervisor/libvirt.ts";
import { logger } from "../src/log.ts";
import { expectMovedWhole, MiB, removeHosts, source, spawnSource, withPair, writable } from "./helpers/migration.ts";
import { shimCalls, withToolShim } from "./helpers/tool-shim.ts";
import { stressWriter } from "./helpers/stress-writer.ts";

afterAll(() => removeHosts());

const virshCalls = (log: string) => shimCalls(log).map((c) => c.argv);
const withVirshShim = (scenario: string, body: Parameters<typeof withToolShim>[2]) => withToolShim("virsh", scenario, body);

const DEST = ["--insecure", "--hypervisor", "libvirt", "--domain", "vm1", "--libvirt-uri", "qemu:///system"];

describe("libvirt, through a virsh PATH shim", () => {
  test("virsh migrate --live --suspend under a random-4K writer, then the fence, then the destination verifies and runs virsh resume", async () => {
    await withVirshShim("ok", ({ h, log }) =>
      withPair(
        h,
        async ({ srv, dst }) => {
          const w = await stressWriter(srv.socket, { pattern: "random4k", bytes: 8 * MiB });
          const run = await source(h, dst.port, ["--insecure", "--hypervisor", "libvirt", "--domain", "vm1", "--libvirt-uri", "qemu:///system", "--json"]);
          await w.stop();
          expect(run.code, run.stderr).toBe(0);
          await dst.waitFor("the VM runs here (libvirt)");
          expect(virshCalls(log)).toEqual([
            ["-c", "qemu:///system", "domstate", "vm1"],
            ["-c", "qemu:///system", "migrate", "--live", "--suspend", "vm1", "qemu+ssh://127.0.0.1/system"],
            ["-c", "qemu:///system", "resume", "vm1"],
          ]);
          // The order that keeps the VM in one place: it leaves, then the fence, then resume.
          const err = run.stderr;
          expect(err.indexOf("point of no return: the VM has left (libvirt)")).toBeGreaterThan(-1);
          expect(err.indexOf("point of no return: the VM has left (libvirt)")).toBeLessThan(err.indexOf("source fenced"));
          expect(dst.stderr().indexOf("image verified")).toBeLessThan(dst.stderr().indexOf("virsh resume vm1"));
          await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
        },
        DEST,
      ),
    );
  });

  test("--dest-uri goes to virsh migrate as given; libvirt refusing the same host: exit 5, its words kept, the disk writable here, no resume there", async () => {
    await withVirshShim("same-host", ({ h, log }) =>
      withPair(
        h,
        async ({ srv, dst }) => {
          const run = await source(h, dst.port, ["--insecure", "--hypervisor", "libvirt", "--domain", "vm1", "--dest-uri", "qemu+tcp://hostb/system"]);
          expect(run.code).toBe(ExitCode.abortedSafely);
          expect(run.stderr).toContain("libvirt refuses to migrate a domain to the host it runs on");
          expect(run.stderr).toContain("Attempt to migrate guest to the same host"); // libvirt's own words
          expect(virshCalls(log)).toContainEqual(["migrate", "--live", "--suspend", "vm1", "qemu+tcp://hostb/system"]);
          expect(virshCalls(log).at(-1)).toEqual(["domstate", "vm1", "--reason"]); // asked, not assumed: "running (booted)"
          expect(run.stderr).toContain("domain vm1 runs here (virsh domstate: running (booted))");
          const st = await srv.ctl.status();
          expect(st.mode).toBe("normal");
          expect(st.recording.active).toBe(false);
          expect(await writable(srv.socket)).toBe(true);
          expect(virshCalls(log).some((c) => c.includes("resume"))).toBe(false);
        },
        DEST,
      ),
    );
  });

  test("virsh migrate fails and libvirt resumed the domain at the source (running (migration canceled)): exit 5, the disk writable here, no resume there", async () => {
    await withVirshShim("migrate-fails", ({ h, log }) =>
      withPair(
        h,
        async ({ srv, dst }) => {
          const run = await source(h, dst.port, ["--insecure", "--hypervisor", "libvirt", "--domain", "vm1"]);
          expect(run.code, run.stderr).toBe(ExitCode.abortedSafely);
          expect(run.stderr).toContain("migrating vm1: virsh migrate failed; domain vm1 runs here (virsh domstate: running (migration canceled))");
          expect(run.stderr).toContain("job 'migration out' failed: Unable to write to socket"); // libvirt's own words
          expect(virshCalls(log).slice(1)).toEqual([
            ["migrate", "--live", "--suspend", "vm1", "qemu+ssh://127.0.0.1/system"],
            ["domstate", "vm1", "--reason"],
          ]);
          expect((await srv.ctl.status()).mode).toBe("normal");
          expect(await writable(srv.socket)).toBe(true);
          expect(virshCalls(log).some((c) => c.includes("resume"))).toBe(false);
        },
        DEST,
      ),
    );
  });

  test("virsh migrate fails and leaves the domain shut off at the source, or gone from it: exit 6 naming the state (or saying it could not be read), never 5; the disk writable here, no resume there", async () => {
    for (const [scenario, says, hint] of [
      ["migrate-fails-shut-off", "the migration failed and left domain vm1 not running here (virsh domstate: shut off (crashed)): it runs on neither host", "hint: `virsh start vm1` brings it back here; its disk is still served here, writable (it was never fenced)"],
      ["migrate-fails-no-domain", "the migration failed, and domain vm1's state here could not be read: it may not be running. virsh domstate vm1 --reason: no such libvirt domain (virsh domstate vm1 --reason exited 1: error: failed to get domain 'vm1')", "hint: look for it on both hosts (virsh list --all)"],
    ]) {
      await withVirshShim(scenario!, ({ h, log }) =>
        withPair(
          h,
          async ({ srv, dst }) => {
            const run = await source(h, dst.port, ["--insecure", "--hypervisor", "libvirt", "--domain", "vm1"]);
            expect(run.code, run.stderr).toBe(ExitCode.unsafeState);
            expect(run.stderr).toContain(`wanmig: migration: ${says}`);
            expect(run.stderr).toContain("job 'migration out' unexpectedly failed"); // libvirt's own words
            expect(run.stderr).toContain(hint);
            expect(run.stderr).not.toContain("aborted before the point of no return");
            expect(virshCalls(log).at(-1)).toEqual(["domstate", "vm1", "--reason"]);
            const st = await srv.ctl.status();
            expect(st.mode).toBe("normal");
            expect(st.recording.active).toBe(false);
            expect(await writable(srv.socket)).toBe(true);
            expect(virshCalls(log).some((c) => c.includes("resume"))).toBe(false);
            expect(await dst.proc.exited).not.toBe(0); // told the source gave up
          },
          DEST,
        ),
      );
    }
  });

  test("an unknown or shut-off domain is refused before anything is copied or recorded", async () => {
    for (const [scenario, says] of [
      ["no-such-domain", "no such libvirt domain"],
      ["shut-off", "domain vm1 is shut off, not running"],
    ]) {
      await withVirshShim(scenario!, ({ h }) =>
        withPair(
          h,
          async ({ srv, dst }) => {
            const run = await source(h, dst.port, ["--insecure", "--hypervisor", "libvirt", "--domain", "vm1"]);
            expect(run.code).toBe(ExitCode.abortedSafely);
            expect(run.stderr).toContain(says);
            expect((await srv.ctl.status()).recording.active).toBe(false);
            expect(existsSync(h.destImage)).toBe(false);
          },
          DEST,
        ),
      );
    }
  });

  test("Ctrl-C while virsh migrate runs: virsh domjobabort cancels it, the domain runs at the source, its disk writable (exit 130)", async () => {
    await withVirshShim("slow-migrate", ({ h, log }) =>
      withPair(
        h,
        async ({ srv, dst }) => {
          const run = spawnSource(h, dst.port, ["--insecure", "--hypervisor", "libvirt", "--domain", "vm1"]);
          await run.waitEvent((e) => e.phase === "memory", 60_000);
          while (!virshCalls(log).some((c) => c.includes("migrate"))) await Bun.sleep(20);
          run.proc.kill("SIGINT");
          const { code } = await run.result();
          expect(code).toBe(130);
          expect(virshCalls(log)).toContainEqual(["domjobabort", "vm1"]);
          expect((await srv.ctl.status()).mode).toBe("normal");
          expect(await writable(srv.socket)).toBe(true);
          expect(virshCalls(log).some((c) => c.includes("resume"))).toBe(false);
        },
        DEST,
      ),
    );
  });
});

describe("Debian's real virsh, on libvirt's test driver (test:///default, its domain 'test' running)", () => {
  // Towards a libvirt that is not there (test:///default to itself hangs virsh now and then).
  test.skipIf(!existsSync("/usr/bin/virsh"))("a migrate that cannot reach the destination fails; virsh domstate --reason then finds the domain running: the failure stands, with that state (an abort, exit 5), not a stranded domain", async () => {
    const hv = new LibvirtSource({ domain: "test", uri: "test:///default", destUri: "qemu+unix:///system?socket=/nonexistent" }, logger("test"));
    const err = await hv.moveMemory(async () => undefined).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(HypervisorError);
    expect((err as HypervisorError).stranded).toBe(false);
    expect((err as HypervisorError).message).toBe("migrating test: virsh cannot reach libvirt; domain test runs here (virsh domstate: running (unknown))");
    expect(String((err as HypervisorError).cause)).toContain("Failed to connect socket to '/nonexistent'"); // virsh's own words
  });
});

