// The paper's evaluation workloads inside the real guest (scripts/guest/init.sh mode=paper,
// issue 17), before anything migrates: a client outside reaches the static web server, a
// post is answered only once it is on the disk (it survives the guest being killed), the
// video streams whole, and the Bonnie-like writer runs. The migrations under them are the
// paper bench's.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { buildGuest, startGuest } from "./helpers/guest.ts";
import { REPO, sh, sparseFile, startServe, tempDir } from "./helpers/serve-process.ts";

const dir = tempDir("wanmig-paper-guest-");
const ns = `wpg${process.pid % 10000}`;
const o = 150 + (process.pid % 50);
const ip = { gw: `10.${o}.5.1`, guest: `10.${o}.5.10` };

beforeAll(async () => {
  await buildGuest();
  await sh(["ip", "netns", "add", ns]);
  await sh(["ip", "-n", ns, "link", "set", "lo", "up"]);
  await sh(["ip", "-n", ns, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
  await sh(["ip", "-n", ns, "addr", "add", `${ip.gw}/24`, "dev", "tap0"]);
  await sh(["ip", "-n", ns, "link", "set", "tap0", "up"]);
}, 300_000);

afterAll(async () => {
  await sh(["ip", "netns", "del", ns], { allowFail: true });
  dir.remove();
});

/** A GET from inside the guest's network: the body (or written to `out`), or an error naming what failed. */
const wget = async (path: string, out?: string) =>
  (await sh(["ip", "netns", "exec", ns, process.execPath, join(REPO, "test", "helpers", "http-get.ts"), `http://${ip.guest}${path}`, ...(out ? [out] : [])])).stdout;

describe("the paper's workloads in the real guest", () => {
  test("static page, posts on disk before they are answered, the video whole and paced, the Bonnie writer running", async () => {
    const image = join(dir.path, "vm.img");
    await sparseFile(image, 256 * 1024 * 1024);
    await sh(["mkfs.ext4", "-q", "-F", image]);
    const srv = await startServe({ image, runDir: dir.path });
    const guest = startGuest({ name: "paper", dir: dir.path, nbdSocket: srv.socket, netnsExec: ["ip", "netns", "exec", ns], nic: { tap: "tap0", gip: `${ip.guest}/24`, ggw: ip.gw }, mode: "paper", bonnie: true });
    try {
      await guest.waitFor(/GUEST BOOTED paper/, 120_000);
      expect(await wget("/")).toContain("static page line 63 of the paper's web server");
      for (let id = 1; id <= 5; id++) expect(await wget(`/cgi-bin/post?id=${id}`)).toBe(`posted ${id}\n`);
      const video = join(dir.path, "video.bin");
      await wget("/video.bin", video);
      expect((await sh(["stat", "-c", "%s", video])).stdout.trim()).toBe(String(32 * 1024 * 1024));
      // The paced stream: 32 KiB pieces keep arriving, each a successful operation.
      const stream = (await sh(["ip", "netns", "exec", ns, process.execPath, join(REPO, "scripts", "bench", "paper-client.ts"), "video", `http://${ip.guest}/cgi-bin/video`, "--duration", "4"])).stdout;
      const pieces = stream.trim().split("\n").map((l) => JSON.parse(l));
      expect(pieces.length).toBeGreaterThan(10);
      expect(pieces.filter((op) => !op.ok)).toEqual([]);
      await guest.waitFor(/GUEST BONNIE round=1\b/, 180_000);
      expect(guest.failures()).toEqual([]);
    } finally {
      await guest.stop(); // a crash: what was acknowledged must be on the disk all the same
      await srv.stop();
    }
    // The posts were fsynced before their answers: all five survive the kill, after journal replay.
    await sh(["e2fsck", "-E", "journal_only", "-y", image], { allowFail: true });
    const posts = (await sh(["debugfs", "-R", "cat /posts", image])).stdout.trim().split("\n");
    expect(posts.slice(0, 5)).toEqual(["POST 1", "POST 2", "POST 3", "POST 4", "POST 5"]);
  }, 420_000);
});
