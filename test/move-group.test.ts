// Moves that share a host (`--group`): the slots cap how many run at once, a killed move
// frees its slot and its share at once (the kernel drops its locks), and the budget is split
// among the moves sending, re-read as they start and end. How well the shared bucket paces
// is a figure of `npm run bench -- evacuate`, not asserted here.
import { describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { followShare, shareOf } from "../src/net/bandwidth-share.ts";
import { TokenBucket } from "../src/net/rate.ts";
import { MoveGroup, parseConcurrency, parseGroupName } from "../src/remote/move-group.ts";
import { REPO } from "./helpers/serve-process.ts";

const runDir = () => mkdtempSync(join(tmpdir(), "wanmig-group-"));

describe("a group of moves on one host", () => {
  test("at most --concurrency hold a slot; the next waits until one leaves", async () => {
    const dir = runDir();
    const a = await MoveGroup.join(dir, "evac", 2);
    const b = await MoveGroup.join(dir, "evac", 2);
    expect(new Set([a.slot, b.slot])).toEqual(new Set([0, 1]));
    let waitedFor = false;
    let third: MoveGroup | undefined;
    const joining = MoveGroup.join(dir, "evac", 2, () => (waitedFor = true)).then((g) => (third = g));
    await Bun.sleep(500);
    expect(waitedFor).toBe(true);
    expect(third).toBeUndefined();
    // Another group on the same host is not held up by this one.
    const other = await MoveGroup.join(dir, "other", 1);
    other.leave();
    b.leave();
    await joining;
    expect(third!.slot).toBe(b.slot);
    a.leave();
    third!.leave();
  });

  test("senders count only the moves sending, across processes; a killed move frees its slot and its share", async () => {
    const dir = runDir();
    // Another process holds slot 0 and sends, as a migrate would, then is SIGKILLed.
    const script = `import { MoveGroup } from "${REPO}/src/remote/move-group.ts"; const g = await MoveGroup.join(${JSON.stringify(dir)}, "evac", 2); g.sending(true); console.log(g.slot); await Bun.sleep(60000);`;
    const other = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe" });
    const reader = other.stdout.getReader();
    const { value } = await reader.read();
    expect(new TextDecoder().decode(value).trim()).toBe("0");
    const me = await MoveGroup.join(dir, "evac", 2);
    expect(me.slot).toBe(1);
    expect(me.senders()).toBe(1);
    me.sending(true);
    expect(me.senders()).toBe(2);
    other.kill("SIGKILL");
    await other.exited;
    expect(me.senders()).toBe(1);
    const next = await MoveGroup.join(dir, "evac", 2);
    expect(next.slot).toBe(0);
    me.sending(false);
    expect(me.senders()).toBe(0);
    me.leave();
    next.leave();
  });

  test("names and counts are checked", () => {
    expect(parseGroupName("evac-hosta_1")).toBe("evac-hosta_1");
    expect(() => parseGroupName("../x")).toThrow("is not a group name");
    expect(() => parseGroupName("")).toThrow("is not a group name");
    expect(parseConcurrency("4")).toBe(4);
    for (const bad of ["0", "65", "1.5", "two"]) expect(() => parseConcurrency(bad)).toThrow("is not a number of moves");
  });
});

describe("the shared budget", () => {
  test("each sender takes an equal part; alone (or before anyone sends) a move takes it all", () => {
    expect(shareOf(25e6, 0)).toBe(25e6);
    expect(shareOf(25e6, 1)).toBe(25e6);
    expect(shareOf(25e6, 2)).toBe(12.5e6);
    expect(shareOf(25e6, 4)).toBe(6.25e6);
  });

  test("the bucket follows the count of senders as it changes", async () => {
    const bucket = new TokenBucket(25e6);
    let senders = 2;
    const share = followShare(bucket, 25e6, () => senders);
    expect(bucket.bytesPerSec).toBe(12.5e6);
    senders = 1;
    for (let i = 0; i < 100 && bucket.bytesPerSec !== 25e6; i++) await Bun.sleep(50); // the next poll, however late
    expect(bucket.bytesPerSec).toBe(25e6);
    bucket.setRate(1e6); // and a rate set by hand holds only until the next poll
    for (let i = 0; i < 100 && bucket.bytesPerSec !== 25e6; i++) await Bun.sleep(50);
    expect(bucket.bytesPerSec).toBe(25e6);
    share.stop();
  });
});
