// Write throttling (the paper's doubling policy) and fencing, through the control API.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { Cmd, NbdErr } from "../src/disk/nbd/nbd-protocol.ts";
import { DoublingThrottlePolicy } from "../src/disk/throttle/throttle-policy.ts";
import { RawNbd } from "./helpers/raw-nbd.ts";
import { type ServeHandle, sparseFile, startServe, tempDir, wanmig } from "./helpers/serve-process.ts";

let dir: ReturnType<typeof tempDir>;

beforeAll(() => {
  dir = tempDir();
});
afterAll(() => dir?.remove());

async function freshServe(name: string): Promise<ServeHandle> {
  const image = join(dir.path, `${name}.img`);
  await sparseFile(image, 8 * 1024 * 1024);
  return startServe({ image, runDir: dir.path, name });
}

async function timedWrites(c: RawNbd, n: number, startBlock: number): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) expect(await c.write((startBlock + i) * 4096, Buffer.alloc(4096, 1))).toBe(0);
  return performance.now() - t0;
}

describe("throttle policy", () => {
  test("steps at T, 2T, 4T writes with delays d, 2d, 4d, capped", () => {
    const p = new DoublingThrottlePolicy({ threshold: 10, delayUs: 100, maxDelayUs: 300 });
    const delays: number[] = [];
    for (let i = 0; i < 100; i++) {
      delays.push(p.delayUs());
      p.onWriteCompleted();
    }
    expect(delays.slice(0, 11)).toEqual(Array(11).fill(0)); // writes 1..11 (the 11th sees level 0)
    expect(delays[11]).toBe(100);
    expect(delays[21]).toBe(200);
    expect(delays[41]).toBe(300); // 400 capped
    expect(p.state().level).toBe(4); // 100 writes > 80
    p.reset();
    expect(p.delayUs()).toBe(0);
  });

  test("it watches the queue: shipping deltas brings the level down, and the highest level is kept", () => {
    const p = new DoublingThrottlePolicy({ threshold: 10, delayUs: 100 });
    for (let i = 0; i < 50; i++) p.onWriteCompleted();
    expect(p.state().level).toBe(3); // queue 50 > 40
    p.noteShipped(35); // queue 15: past T only
    expect(p.state()).toMatchObject({ level: 1, maxLevel: 3, deltaQueue: 15, currentDelayUs: 100 });
    p.noteShipped(20); // reports never go backwards
    expect(p.state().deltaQueue).toBe(15);
    p.noteShipped(50);
    expect(p.delayUs()).toBe(0);
    for (let i = 0; i < 10; i++) p.onWriteCompleted();
    expect(p.state().level).toBe(0); // a queue of 10 is not past T=10
  });
});

describe("throttling in serve", () => {
  let srv: ServeHandle;
  beforeAll(async () => {
    srv = await freshServe("thr");
  });
  afterAll(async () => {
    await srv.stop();
  });

  test("a burst past the threshold is measurably delayed, and the delay doubles", async () => {
    const state = await srv.ctl.throttle({ threshold: 20, delayUs: 10_000 });
    expect(state.threshold).toBe(20);
    const c = await RawNbd.connect(srv.socket);
    await c.go();

    // Not recording: nothing is counted, nothing is delayed.
    await timedWrites(c, 30, 0);
    expect((await srv.ctl.status()).throttle.writesCounted).toBe(0);

    await srv.ctl.startRecording();
    await timedWrites(c, 20, 100); // writes 1..20: under the threshold
    let st = await srv.ctl.status();
    expect(st.throttle.level).toBe(0);
    expect(st.throttle.delayedWrites).toBe(0);

    await timedWrites(c, 1, 200); // write 21 crosses T=20
    const level1 = await timedWrites(c, 19, 201); // writes 22..40 at 10 ms each
    st = await srv.ctl.status();
    expect(st.throttle.level).toBe(1);
    expect(st.throttle.currentDelayUs).toBe(10_000);
    expect(level1).toBeGreaterThanOrEqual(19 * 10);

    await timedWrites(c, 1, 300); // write 41 crosses 2T=40
    const level2 = await timedWrites(c, 20, 301); // at 20 ms each
    st = await srv.ctl.status();
    expect(st.throttle.level).toBe(2);
    expect(st.throttle.currentDelayUs).toBe(20_000);
    expect(level2).toBeGreaterThanOrEqual(20 * 20);
    expect(st.throttle.delayedWrites).toBe(19 + 1 + 20); // writes 22..61

    // Ending record mode ends throttling at once.
    await srv.ctl.stopRecording();
    expect((await srv.ctl.status()).throttle.level).toBe(0);
    c.disconnect();
  });

  test("throttled writes in flight together keep their order", async () => {
    await srv.ctl.throttle({ threshold: 1, delayUs: 5_000 });
    await srv.ctl.startRecording();
    const c = await RawNbd.connect(srv.socket);
    await c.go();
    await timedWrites(c, 2, 500); // now past the threshold
    for (let i = 1; i <= 32; i++) c.request(Cmd.WRITE, 0, 4096, { payload: Buffer.alloc(4096, i) });
    for (let i = 0; i < 32; i++) expect((await c.reply()).error).toBe(0);
    const back = await c.read(0, 4096);
    expect(back.data![0]).toBe(32); // the last one sent is the one that stays
    await srv.ctl.stopRecording();
    c.disconnect();
  });

  test("a rate cap from the source paces writes by their size, keeps their order, and lapses when not renewed", async () => {
    await srv.ctl.throttle({ threshold: 1_000_000 }); // the paper's delay out of the way
    const rec = await srv.ctl.startRecording();
    const c = await RawNbd.connect(srv.socket);
    await c.go();
    // 1 MiB/s: a 64 KiB write takes 62.5 ms of the allowance, a 4 KiB one 3.9 ms.
    const answer = await srv.ctl.shipped(0n, rec.id, 1024 * 1024);
    expect(answer.rateCapBytesPerSec).toBe(1024 * 1024);
    const t0 = performance.now();
    for (let i = 1; i <= 8; i++) c.request(Cmd.WRITE, 0, 65536, { payload: Buffer.alloc(65536, i) });
    for (let i = 0; i < 8; i++) expect((await c.reply()).error).toBe(0);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(7 * 62.5); // the first goes at once
    expect((await c.read(0, 4096)).data![0]).toBe(8);
    expect((await srv.ctl.status()).throttle.rateCapBytesPerSec).toBe(1024 * 1024);
    await Bun.sleep(2100); // the lease (2 s) lapses without a report
    expect((await srv.ctl.status()).throttle.rateCapBytesPerSec).toBeUndefined();
    const delayed = (await srv.ctl.status()).throttle.delayedWrites;
    expect(delayed).toBeGreaterThanOrEqual(7);
    for (let i = 0; i < 8; i++) c.request(Cmd.WRITE, 65536 * i, 65536, { payload: Buffer.alloc(65536, 1) });
    for (let i = 0; i < 8; i++) expect((await c.reply()).error).toBe(0);
    expect((await srv.ctl.status()).throttle.delayedWrites).toBe(delayed); // none held back
    await srv.ctl.shipped(0n, rec.id, 1024 * 1024);
    await srv.ctl.stopRecording(); // the end of recording lifts it at once
    expect((await srv.ctl.status()).throttle.rateCapBytesPerSec).toBeUndefined();
    await expect(srv.ctl.shipped(0n, undefined, -1)).rejects.toThrow("rateCap must be a number");
    c.disconnect();
  });

  test("a cap given with the start of recording paces the very first write (the source's provisional cap)", async () => {
    await srv.ctl.throttle({ threshold: 1_000_000 });
    await expect(srv.ctl.startRecording({ rateCap: -1 })).rejects.toThrow("rateCap must be a number");
    expect((await srv.ctl.status()).recording.active).toBe(false);
    const c = await RawNbd.connect(srv.socket);
    await c.go();
    await srv.ctl.startRecording({ rateCap: 1024 * 1024 });
    const t0 = performance.now();
    for (let i = 1; i <= 4; i++) c.request(Cmd.WRITE, 0, 65536, { payload: Buffer.alloc(65536, i) });
    for (let i = 0; i < 4; i++) expect((await c.reply()).error).toBe(0);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(3 * 62.5);
    expect((await srv.ctl.status()).throttle.rateCapBytesPerSec).toBe(1024 * 1024);
    await srv.ctl.stopRecording();
    c.disconnect();
  });

  test("the control API rejects nonsense throttle parameters", async () => {
    await expect(srv.ctl.throttle({ threshold: -5 })).rejects.toThrow("threshold must be a number >= 1");
    await expect(srv.ctl.throttle({ bogus: 1 } as never)).rejects.toThrow("unknown throttle parameter bogus");
  });
});

describe("fence", () => {
  test("after POST /v1/fence writes fail with EPERM and reads work", async () => {
    const srv = await freshServe("fen");
    try {
      const c = await RawNbd.connect(srv.socket);
      await c.go();
      expect(await c.write(0, Buffer.alloc(4096, 7))).toBe(0);
      const f = await srv.ctl.fence();
      expect(f.fenced).toBe(true);
      expect(await c.write(0, Buffer.alloc(4096, 8))).toBe(NbdErr.EPERM);
      c.request(Cmd.WRITE_ZEROES, 0, 4096);
      expect((await c.reply()).error).toBe(NbdErr.EPERM);
      c.request(Cmd.TRIM, 0, 4096);
      expect((await c.reply()).error).toBe(NbdErr.EPERM);
      const r = await c.read(0, 4096);
      expect(r.error).toBe(0);
      expect(r.data!.every((b) => b === 7)).toBe(true);
      const st = await srv.ctl.status();
      expect(st.mode).toBe("fenced");
      expect(st.fence.refusedWrites).toBe(3);
      // New connections are fenced too.
      const d = await RawNbd.connect(srv.socket);
      await d.go();
      expect(await d.write(4096, Buffer.alloc(512, 1))).toBe(NbdErr.EPERM);
      d.disconnect();
      c.disconnect();
    } finally {
      await srv.stop();
    }
  });

  test("a write waiting out its throttle delay when the fence falls is refused", async () => {
    const srv = await freshServe("fen2");
    try {
      await srv.ctl.throttle({ threshold: 1, delayUs: 400_000 });
      await srv.ctl.startRecording();
      const c = await RawNbd.connect(srv.socket);
      await c.go();
      await timedWrites(c, 2, 10);
      c.request(Cmd.WRITE, 0, 4096, { payload: Buffer.alloc(4096, 0xee) });
      await Bun.sleep(50);
      expect((await srv.ctl.status()).throttle.queueLength).toBe(1);
      await srv.ctl.fence();
      expect((await c.reply()).error).toBe(NbdErr.EPERM);
      expect((await c.read(0, 4096)).data!.every((b) => b === 0)).toBe(true);
      c.disconnect();
    } finally {
      await srv.stop();
    }
  });
});

describe("held writes and the fence", () => {
  test("writes held by a rate cap meet the fence, in order, instead of waiting out their turns", async () => {
    const srv = await freshServe("fen3");
    try {
      // 1 KiB/s: the four 64 KiB writes below would be let through over four minutes;
      // answered within the reply helper's 5 s, they were released by the fence.
      await srv.ctl.startRecording({ rateCap: 1024 });
      const c = await RawNbd.connect(srv.socket);
      await c.go();
      for (let i = 1; i <= 4; i++) c.request(Cmd.WRITE, i * 65536, 65536, { payload: Buffer.alloc(65536, i) });
      await Bun.sleep(100);
      const st = (await srv.ctl.status()).throttle;
      expect(st.queueLength).toBeGreaterThanOrEqual(3);
      // What is held is told in bytes too (the source's estimate counts it: it crosses before the hand-off can go).
      expect(st.heldBytes).toBe(st.queueLength * 65536);
      const answer = await srv.ctl.shipped(0n, undefined, 1024);
      expect(answer.held).toEqual({ writes: st.queueLength, bytes: st.heldBytes });
      await srv.ctl.fence();
      const errors = [];
      for (let i = 0; i < 4; i++) errors.push((await c.reply()).error);
      // The first may have been let through before the fence; every one after it is refused.
      expect(errors.slice(1).every((e) => e === NbdErr.EPERM)).toBe(true);
      expect((await srv.ctl.status()).throttle).toMatchObject({ queueLength: 0, heldBytes: 0 });
      // A new write is refused too, not queued behind the cap.
      expect(await c.write(0, Buffer.alloc(4096, 9))).toBe(NbdErr.EPERM);
      for (let i = 2; i <= 4; i++) expect((await c.read(i * 65536, 4096)).data!.every((b) => b === 0)).toBe(true);
      c.disconnect();
    } finally {
      await srv.stop();
    }
  }, 120_000);
});

describe("the VM stopped at the source", () => {
  test("writes held by a cap and by the paper's delay go through at once and in order; later ones are not held; the next recording holds again", async () => {
    const srv = await freshServe("stop1");
    try {
      await srv.ctl.throttle({ threshold: 1, delayUs: 200_000 });
      // 1 KiB/s: the 64 KiB writes below would take a minute each.
      const rec = await srv.ctl.startRecording({ rateCap: 1024 });
      const c = await RawNbd.connect(srv.socket);
      await c.go();
      for (let i = 1; i <= 4; i++) c.request(Cmd.WRITE, 0, 65536, { payload: Buffer.alloc(65536, i) });
      await Bun.sleep(100);
      expect((await srv.ctl.status()).throttle.queueLength).toBeGreaterThanOrEqual(3);
      await expect(srv.ctl.vmStopped("not-this-one")).rejects.toThrow("not not-this-one");
      const st = await srv.ctl.vmStopped(rec.id!);
      expect(st.rateCapBytesPerSec).toBeUndefined();
      // Answered within the reply helper's 5 s: let go, none refused, the last one stays.
      for (let i = 0; i < 4; i++) expect((await c.reply()).error).toBe(0);
      expect((await c.read(0, 4096)).data![0]).toBe(4);
      const status = await srv.ctl.status();
      expect(status.throttle).toMatchObject({ queueLength: 0, vmStopped: true });
      // A report that still names a cap holds nothing now; the writes are still recorded.
      await srv.ctl.shipped(0n, rec.id, 1024);
      const delayed = status.throttle.delayedWrites;
      for (let i = 0; i < 8; i++) expect(await c.write(65536 * (i + 1), Buffer.alloc(65536, 7))).toBe(0);
      expect((await srv.ctl.status()).throttle.delayedWrites).toBe(delayed);
      expect((await srv.ctl.status()).recording.records).toBeGreaterThanOrEqual(12);
      await srv.ctl.stopRecording();
      // A new recording (a VM that runs again) is throttled again from its first write.
      await srv.ctl.startRecording({ rateCap: 1024 });
      expect((await srv.ctl.status()).throttle.vmStopped).toBe(false);
      for (let i = 1; i <= 2; i++) c.request(Cmd.WRITE, 0, 65536, { payload: Buffer.alloc(65536, i) });
      await Bun.sleep(200);
      expect((await srv.ctl.status()).throttle.queueLength).toBe(1);
      await srv.ctl.stopRecording(); // lets it go
      for (let i = 0; i < 2; i++) expect((await c.reply()).error).toBe(0);
      c.disconnect();
      // Nothing to stop without a recording.
      await expect(srv.ctl.vmStopped(rec.id!)).rejects.toThrow("records nothing");
    } finally {
      await srv.stop();
    }
  }, 120_000);
});

describe("wanmig status", () => {
  test("prints the state as text and as JSON", async () => {
    const srv = await freshServe("st");
    try {
      const text = await wanmig(["status", "--name", "st", "--run-dir", dir.path]);
      expect(text.code).toBe(0);
      expect(text.stdout).toContain("st: normal, 0 client(s)");
      const json = await wanmig(["status", "--name", "st", "--run-dir", dir.path, "--json"]);
      expect(JSON.parse(json.stdout).size).toBe(8 * 1024 * 1024);
    } finally {
      await srv.stop();
    }
    const gone = await wanmig(["status", "--name", "st", "--run-dir", dir.path]);
    expect(gone.code).toBe(4);
    expect(gone.stderr).toContain("cannot reach the control socket");
  });
});
