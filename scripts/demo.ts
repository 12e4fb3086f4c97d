// `npm run demo`: wanmig serve in action on loopback, on an embedded default.
// Until `source`/`dest` land (issue 3), it shows what they stand on: a VM-like client
// writes while record mode is on, and the delta log replayed on a snapshot gives the live
// image. The full local migration demo replaces this when `source` and `dest` exist.
import { $ } from "bun";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControlClient } from "../src/disk/control-client.ts";
import { replayDeltaLog } from "../src/disk/delta-log.ts";
import { FileBackend } from "../src/disk/file-backend.ts";

const dir = mkdtempSync(join(tmpdir(), "wanmig-demo-"));
const image = join(dir, "vm.img");
const main = join(import.meta.dir, "..", "src", "main.ts");
const say = (s: string) => console.log(`\n== ${s}`);

try {
  say(`a 64 MiB disk image with 16 MiB of data: ${image}`);
  await $`truncate -s 64M ${image}`;
  await $`head -c 16M /dev/urandom | dd of=${image} conv=notrunc status=none`;

  say("wanmig serve --name demo (NBD on unix socket, control API beside it)");
  const serve = Bun.spawn([process.execPath, main, "serve", "--image", image, "--name", "demo", "--run-dir", dir], { stderr: "inherit" });
  const ctl = new ControlClient(join(dir, "demo.ctl"));
  for (let i = 0; i < 200; i++) {
    if (await ctl.status().then(() => true, () => false)) break;
    await Bun.sleep(25);
  }
  await Bun.sleep(100);
  const uri = `nbd+unix:///?socket=${join(dir, "demo.nbd")}`;
  console.log((await $`nbdinfo ${uri}`.text()).split("\n").slice(0, 4).join("\n"));

  say("record mode on, snapshot taken; a client writes 8 MiB at random (fio, 2 connections)");
  const rec = await ctl.startRecording();
  const snapshot = join(dir, "snapshot.img");
  copyFileSync(image, snapshot);
  await $`fio --name=vm --ioengine=nbd --uri=${uri} --rw=randwrite --bs=4k --iodepth=16 --numjobs=2 --size=64M --io_size=4M --output=/dev/null`;
  console.log(await $`${process.execPath} ${main} status --name demo --run-dir ${dir}`.text());

  say(`replaying ${rec.path} onto the snapshot`);
  const stopped = await ctl.stopRecording();
  const fb = new FileBackend(snapshot, false);
  const n = replayDeltaLog(stopped.path!, { write: (o, d) => void fb.write(o, d, false), zero: (o, l) => void fb.zero(o, l, false, true) });
  fb.close();
  const same = (await $`cmp ${snapshot} ${image}`.nothrow()).exitCode === 0;
  console.log(`${n} deltas applied; snapshot + deltas ${same ? "==" : "!="} live image`);

  say("fenced: writes now fail with EPERM, reads still work");
  await ctl.fence();
  const w = await $`nbdcopy --flush ${snapshot} ${uri}`.nothrow().quiet();
  console.log(`nbdcopy into the fenced export: exit ${w.exitCode} (${w.stderr.toString().trim().split("\n")[0]})`);

  serve.kill("SIGTERM");
  await serve.exited;
  process.exitCode = same ? 0 : 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
