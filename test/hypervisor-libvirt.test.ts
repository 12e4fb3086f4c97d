// --hypervisor libvirt against a PATH shim (test/fixtures/bin/virsh: a second libvirt host
// cannot exist here) that logs its argv and plays virsh's real messages. What is pinned:
// the argv contract, the order (virsh migrate --live --suspend returns, then the fence,
// then the destination verifies, then virsh resume), and what each failure leaves behind:
// before the point of no return the domain runs at the source and its disk is writable.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { ExitCode } from "../src/errors.ts";
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
