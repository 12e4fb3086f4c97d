// `npm run demo`: a live disk migration on loopback, on an embedded default.
// Host A and host B are two directories; the "VM" is `wanmig workload` writing to its disk
// over NBD through the whole migration. At the end both images must be byte-identical.
// It needs nothing beyond `npm install`: coreutils and this checkout (no Debian package).
import { $ } from "bun";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControlClient } from "../src/disk/service/control-client.ts";

const dir = mkdtempSync(join(tmpdir(), "wanmig-demo-"));
const hostA = join(dir, "hostA");
const hostB = join(dir, "hostB");
mkdirSync(hostA);
mkdirSync(hostB);
const image = join(hostA, "web1.img");
const destImage = join(hostB, "web1.img");
const secret = join(dir, "secret");
const main = join(import.meta.dir, "..", "src", "main.ts");
const wanmig = (...args: string[]) => [process.execPath, main, ...args];
const say = (s: string) => console.log(`\n== ${s}`);
const procs: ReturnType<typeof Bun.spawn>[] = [];

async function waitFor(check: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (await check().catch(() => false)) return;
    await Bun.sleep(25);
  }
  throw new Error(`timed out waiting for ${what}`);
}

try {
  say(`host A: a 512 MiB image with 96 MiB of random data and 32 MiB of text (${image})`);
  await $`truncate -s 512M ${image}`;
  await $`head -c 96M /dev/urandom | dd of=${image} conv=notrunc status=none`;
  await $`yes "wanmig demo: compressible log line" | head -c 32M | dd of=${image} bs=1M seek=200 conv=notrunc status=none`;
  writeFileSync(secret, crypto.getRandomValues(new Uint8Array(24)).toHex(), { mode: 0o600 });

  say("host A: wanmig serve --name web1 (the VM's disk, over NBD)");
  procs.push(Bun.spawn(wanmig("serve", "--image", image, "--name", "web1", "--run-dir", hostA), { stderr: "inherit" }));
  const ctlA = new ControlClient(join(hostA, "web1.ctl"));
  await waitFor(async () => (await ctlA.status()).clients >= 0, "serve");

  say("host A: the \"VM\": wanmig workload --pattern dynamic-web (bursts of database writes, a log)");
  // It runs until the hand-off; after it, host A refuses its writes (fenced).
  const vm = Bun.spawn(wanmig("workload", "--name", "web1", "--run-dir", hostA, "--pattern", "dynamic-web", "--duration", "60s", "--log", "warn"), { stdout: "ignore", stderr: "inherit" });
  procs.push(vm);

  say("host B: wanmig dest --listen 127.0.0.1:0 (waits for the disk, then serves it)");
  const dest = Bun.spawn(wanmig("dest", "--name", "web1", "--image", destImage, "--run-dir", hostB, "--listen", "127.0.0.1:0", "--secret-file", secret), { stderr: "pipe" });
  procs.push(dest);
  let destLog = "";
  (async () => {
    for await (const c of dest.stderr) {
      const t = new TextDecoder().decode(c);
      destLog += t;
      process.stderr.write(t);
    }
  })();
  await waitFor(async () => /listening on [^ ]+:\d+/.test(destLog), "dest");
  const port = /listening on [^ ]+:(\d+)/.exec(destLog)![1];
  await Bun.sleep(1000);

  say(`host A: wanmig source --name web1 --to 127.0.0.1:${port}`);
  const src = Bun.spawn(wanmig("source", "--name", "web1", "--run-dir", hostA, "--to", `127.0.0.1:${port}`, "--secret-file", secret), { stdout: "inherit", stderr: "inherit" });
  const code = await src.exited;
  vm.kill();
  await vm.exited;
  await waitFor(async () => destLog.includes("now serving"), "dest to serve");

  say("check");
  const same = (await $`cmp ${image} ${destImage}`.nothrow()).exitCode === 0;
  const du = async (p: string) => (await $`du -h ${p}`.text()).split("\t")[0];
  console.log(`source exit ${code}; images ${same ? "IDENTICAL" : "DIFFER"}; on disk: A ${await du(image)}, B ${await du(destImage)}`);
  console.log((await $`${wanmig("workload", "--name", "web1", "--run-dir", hostB, "--pattern", "dynamic-web", "--duration", "1s")}`.text()).trim().replace(/^/, "host B, the disk's new home: "));
  console.log((await $`${wanmig("status", "--name", "web1", "--run-dir", hostA)}`.text()).split("\n")[0]);
  console.log((await $`${wanmig("status", "--name", "web1", "--run-dir", hostB)}`.text()).split("\n")[0]);
  process.exitCode = code === 0 && same ? 0 : 1;
} finally {
  for (const p of procs) p.kill();
  await Promise.all(procs.map((p) => p.exited));
  rmSync(dir, { recursive: true, force: true });
}
