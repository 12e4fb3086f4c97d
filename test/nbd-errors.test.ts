// Bad requests get NBD errors and the server goes on serving; bad handshakes end only
// their own connection.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { Cmd, CmdFlag, NbdErr, Opt, Rep } from "../src/disk/nbd/nbd-protocol.ts";
import { RawNbd } from "./helpers/raw-nbd.ts";
import { RawSocket } from "./helpers/raw-socket.ts";
import { type ServeHandle, sh, sparseFile, startServe, tempDir } from "./helpers/serve-process.ts";

const SIZE = 8 * 1024 * 1024;
let dir: ReturnType<typeof tempDir>;
let srv: ServeHandle;

beforeAll(async () => {
  dir = tempDir();
  const image = join(dir.path, "disk.img");
  await sparseFile(image, SIZE);
  srv = await startServe({ image, runDir: dir.path });
});
afterAll(async () => {
  await srv?.stop();
  dir?.remove();
});

async function connected(): Promise<RawNbd> {
  const c = await RawNbd.connect(srv.socket);
  await c.go();
  return c;
}

/** The server still serves a fresh, well-behaved client. */
async function stillServes(): Promise<void> {
  const { stdout } = await sh(["nbdinfo", "--size", srv.uri]);
  expect(Number(stdout.trim())).toBe(SIZE);
}

describe("requests that must fail without dropping the connection", () => {
  test("read past the end: EINVAL, and the same connection keeps working", async () => {
    const c = await connected();
    expect((await c.read(SIZE - 10, 20)).error).toBe(NbdErr.EINVAL);
    expect((await c.read(SIZE + 4096, 4096)).error).toBe(NbdErr.EINVAL);
    expect((await c.read(2 ** 60, 512)).error).toBe(NbdErr.EINVAL);
    const ok = await c.read(SIZE - 10, 10);
    expect(ok.error).toBe(0);
    expect(ok.data!.length).toBe(10);
    c.disconnect();
  });

  test("write past the end: ENOSPC, the payload is drained, the stream stays in step", async () => {
    const c = await connected();
    const payload = Buffer.alloc(8192, 0xab);
    expect(await c.write(SIZE - 4096, payload)).toBe(NbdErr.ENOSPC);
    // Had the 8 KiB payload not been drained, this would parse garbage as a header.
    expect(await c.write(0, Buffer.alloc(4096, 0xcd))).toBe(0);
    const back = await c.read(0, 4096);
    expect(back.data!.every((b) => b === 0xcd)).toBe(true);
    const tail = await c.read(SIZE - 4096, 4096);
    expect(tail.data!.every((b) => b === 0)).toBe(true); // the refused write left no trace
    c.disconnect();
  });

  test("unknown command and unknown flags: EINVAL", async () => {
    const c = await connected();
    c.request(42, 0, 512);
    expect((await c.reply()).error).toBe(NbdErr.EINVAL);
    c.request(Cmd.READ, 0, 512, { flags: CmdFlag.FUA });
    expect((await c.reply()).error).toBe(NbdErr.EINVAL);
    c.request(Cmd.WRITE, 0, 512, { flags: 0x80, payload: Buffer.alloc(512) });
    expect((await c.reply()).error).toBe(NbdErr.EINVAL);
    expect((await c.read(0, 512)).error).toBe(0);
    c.disconnect();
  });

  test("zero-length read and oversized read: EINVAL", async () => {
    const c = await connected();
    expect((await c.read(0, 0)).error).toBe(NbdErr.EINVAL);
    c.request(Cmd.READ, 0, 64 * 1024 * 1024);
    expect((await c.reply()).error).toBe(NbdErr.EINVAL);
    c.disconnect();
  });

  test("pipelined requests are all answered, each with its own cookie", async () => {
    const c = await connected();
    const cookies = new Set<bigint>();
    for (let i = 0; i < 64; i++) cookies.add(c.request(Cmd.WRITE, i * 4096, 4096, { payload: Buffer.alloc(4096, i) }));
    for (let i = 0; i < 64; i++) {
      const r = await c.reply();
      expect(r.error).toBe(0);
      expect(cookies.delete(r.cookie)).toBe(true);
    }
    expect(cookies.size).toBe(0);
    c.disconnect();
  });
});

describe("handshake", () => {
  test("unknown option: ERR_UNSUP and the session goes on", async () => {
    const c = await RawNbd.connect(srv.socket);
    c.sendOption(Opt.EXTENDED_HEADERS); // known to the spec, not served: simple and structured replies only
    expect((await c.readOptionReply()).type).toBe(Rep.ERR_UNSUP);
    c.sendOption(4242, Buffer.from("junk"));
    expect((await c.readOptionReply()).type).toBe(Rep.ERR_UNSUP);
    await c.go();
    expect(c.size).toBe(SIZE);
    expect((await c.read(0, 4096)).error).toBe(0);
    c.disconnect();
  });

  test("INFO for an unknown export: ERR_UNKNOWN; ABORT is acknowledged and closes", async () => {
    const c = await RawNbd.connect(srv.socket);
    const name = Buffer.from("nope");
    const d = Buffer.alloc(4 + name.length + 2);
    d.writeUInt32BE(name.length, 0);
    name.copy(d, 4);
    c.sendOption(Opt.INFO, d);
    expect((await c.readOptionReply()).type).toBe(Rep.ERR_UNKNOWN);
    c.sendOption(Opt.ABORT);
    expect((await c.readOptionReply()).type).toBe(Rep.ACK);
    expect(await c.sock.waitClosed()).toBe(true);
  });

  test("malformed handshake ends that connection only", async () => {
    const s = await RawSocket.unix(srv.socket);
    await s.read(18);
    s.write(Buffer.from([0, 0, 0, 3]));
    s.write(Buffer.from("THIS IS NOT IHAVEOPT AT ALL"));
    expect(await s.waitClosed()).toBe(true);
    const t = await RawSocket.unix(srv.socket);
    await t.read(18);
    t.write(Buffer.from([0xff, 0xff, 0xff, 0xff])); // unknown client flags
    expect(await t.waitClosed()).toBe(true);
    await stillServes();
    expect(srv.stderr()).toContain("option without the IHAVEOPT magic");
  });

  test("client vanishing in the middle of a write payload does not disturb others", async () => {
    const other = await connected();
    const c = await connected();
    c.request(Cmd.WRITE, 0, 1024 * 1024, { payload: Buffer.alloc(300 * 1024, 1) }); // 300 KiB of 1 MiB
    c.sock.end();
    await Bun.sleep(100);
    expect((await other.read(0, 4096)).error).toBe(0);
    other.disconnect();
    await stillServes();
    expect(srv.proc.exitCode).toBeNull();
  });

  test("read-only serve refuses writes with EPERM and still reads", async () => {
    const image = join(dir.path, "ro.img");
    await sparseFile(image, SIZE);
    const ro = await startServe({ image, runDir: dir.path, name: "ro", args: ["--read-only"] });
    try {
      const c = await RawNbd.connect(ro.socket);
      await c.go();
      expect(c.flags & 2).toBe(2); // NBD_FLAG_READ_ONLY
      expect(await c.write(0, Buffer.alloc(512, 1))).toBe(NbdErr.EPERM);
      expect((await c.read(0, 512)).error).toBe(0);
      c.disconnect();
    } finally {
      await ro.stop();
    }
  });
});
