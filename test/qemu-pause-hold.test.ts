// The QEMU driver's hold on the VM's pause (switchover-hold.ts): a real QEMU's
// downtime-limit is 1 ms while held and the VM's own again after; a migration that does
// not complete, or a source killed while holding, leaves it as it was.
import { afterEach, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { QemuSource } from "../src/hypervisor/qemu.ts";
import { QmpClient } from "../src/hypervisor/qmp.ts";
import { logger } from "../src/log.ts";
import { tempDir } from "./helpers/serve-process.ts";

const log = logger("test");
let dir: ReturnType<typeof tempDir> | undefined;
let qemu: ReturnType<typeof Bun.spawn> | undefined;

/**
 * A QEMU with no guest at all: QMP and the migration parameters are all this needs. A QMP
 * socket takes one client at a time: the driver has the first, the test looks through the second.
 */
async function startQemu(): Promise<{ qmp: string; look: string }> {
  dir = tempDir();
  const [qmp, look] = [join(dir.path, "qmp.sock"), join(dir.path, "look.sock")];
  qemu = Bun.spawn(["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-qmp", `unix:${qmp},server=on,wait=off`, "-qmp", `unix:${look},server=on,wait=off`], {
    stdout: "ignore",
    stderr: "pipe",
  });
  for (let i = 0; i < 200; i++) {
    if (existsSync(qmp) && existsSync(look)) return { qmp: `unix:${qmp}`, look: `unix:${look}` };
    await Bun.sleep(25);
  }
  throw new Error("QEMU did not open its QMP sockets");
}

async function limitOf(qmp: string): Promise<number> {
  const c = await QmpClient.connect(qmp, log);
  try {
    return (await c.execute<{ "downtime-limit": number }>("query-migrate-parameters"))["downtime-limit"];
  } finally {
    c.close();
  }
}

afterEach(() => {
  qemu?.kill("SIGKILL");
  dir?.remove();
});

describe("QEMU: holding the VM's pause back", () => {
  test("the downtime-limit is 1 ms while held, the VM's own once let go, and after an abort", async () => {
    const { qmp, look } = await startQemu();
    const setup = await QmpClient.connect(look, log);
    await setup.execute("migrate-set-parameters", { "downtime-limit": 450 });
    setup.close();
    const src = new QemuSource({ qmp, migrateUri: "tcp:127.0.0.1:1" }, log);
    await src.prepare();
    await src.holdPause(true);
    expect(await limitOf(look)).toBe(1);
    await src.holdPause(false);
    expect(await limitOf(look)).toBe(450);
    await src.holdPause(true);
    await src.abort();
    expect(await limitOf(look)).toBe(450);
    src.close();
  }, 30_000);

  test("a limit of 1 ms found at the start (a source killed while holding) is put back to QEMU's default", async () => {
    const { qmp, look } = await startQemu();
    const killed = new QemuSource({ qmp, migrateUri: "tcp:127.0.0.1:1" }, log);
    await killed.prepare();
    await killed.holdPause(true);
    killed.close(); // no abort: as if killed
    expect(await limitOf(look)).toBe(1);
    const next = new QemuSource({ qmp, migrateUri: "tcp:127.0.0.1:1" }, log);
    await next.prepare();
    expect(await limitOf(look)).toBe(300);
    next.close();
  }, 30_000);
});
