// `wanmig serve` tells clients where the holes are (structured replies, NBD_CMD_BLOCK_STATUS
// with base:allocation), so backup tools and `nbdcopy` read a thin disk's data only.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { AllocationState, Cmd, CmdFlag, NbdErr, Opt, Rep, ReplyFlag, ReplyType } from "../src/disk/nbd/nbd-protocol.ts";
import { RawNbd } from "./helpers/raw-nbd.ts";
import { overwrite, serveForSuite, sh, sparseFile } from "./helpers/serve-process.ts";

const MiB = 1024 * 1024;
// 64 MiB: data at [10 MiB, 13 MiB) and one 4 KiB block at 47 MiB, holes elsewhere.
const suite = serveForSuite(
  async (image) => {
    await sparseFile(image, 64 * MiB);
    overwrite(image, 10 * MiB, new Uint8Array(3 * MiB).fill(0x5a));
    overwrite(image, 47 * MiB, new Uint8Array(4096).fill(0xa5));
  },
  { name: "vm1" },
);

/** An option's data for LIST/SET_META_CONTEXT: the export's name and the queries. */
function metaQuery(exportName: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(exportName), Buffer.alloc(4)];
  parts[0]!.writeUInt32BE(parts[1]!.length, 0);
  parts[2]!.writeUInt32BE(queries.length, 0);
  for (const q of queries) {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(Buffer.byteLength(q), 0);
    parts.push(len, Buffer.from(q));
  }
  return Buffer.concat(parts);
}

/** A raw client that negotiated structured replies and, if asked, base:allocation. */
async function structuredClient(allocation: boolean): Promise<RawNbd> {
  const c = await RawNbd.connect(suite.srv.socket);
  c.sendOption(Opt.STRUCTURED_REPLY);
  expect((await c.readOptionReply()).type).toBe(Rep.ACK);
  if (allocation) {
    c.sendOption(Opt.SET_META_CONTEXT, metaQuery("vm1", ["base:allocation"]));
    const ctx = await c.readOptionReply();
    expect(ctx.type).toBe(Rep.META_CONTEXT);
    expect(ctx.data.subarray(4).toString()).toBe("base:allocation");
    expect((await c.readOptionReply()).type).toBe(Rep.ACK);
  }
  await c.go("vm1");
  return c;
}

function descriptors(payload: Buffer): [number, number][] {
  const out: [number, number][] = [];
  for (let at = 4; at < payload.length; at += 8) out.push([payload.readUInt32BE(at), payload.readUInt32BE(at + 4)]);
  return out;
}

const HOLE = AllocationState.HOLE | AllocationState.ZERO;

describe("real NBD clients see the holes", () => {
  test("nbdinfo --map: the data where it was written, holes (reading as zeros) elsewhere", async () => {
    const { stdout } = await sh(["nbdinfo", "--map", "--json", suite.srv.uri]);
    const map = (JSON.parse(stdout) as { offset: number; length: number; type: number }[]).map((e) => [e.offset, e.length, e.type]);
    expect(map).toEqual([
      [0, 10 * MiB, HOLE],
      [10 * MiB, 3 * MiB, 0],
      [13 * MiB, 34 * MiB, HOLE],
      [47 * MiB, 4096, 0],
      [47 * MiB + 4096, 17 * MiB - 4096, HOLE],
    ]);
  });

  test("nbdcopy of the running disk: byte-identical, and as thin as the original", async () => {
    const copy = join(suite.dir.path, "copy.img");
    await sh(["nbdcopy", suite.srv.uri, copy]);
    await sh(["cmp", suite.image, copy]);
    const du = async (p: string) => Number((await sh(["du", "-k", p])).stdout.split("\t")[0]);
    expect(await du(copy)).toBeLessThanOrEqual((await du(suite.image)) + 64);
  });

  test("a write into a hole shows as data at once", async () => {
    const c = await structuredClient(true);
    expect(await c.write(30 * MiB, new Uint8Array(4096).fill(1))).toBe(0); // a simple reply still
    c.request(Cmd.BLOCK_STATUS, 30 * MiB - 4096, 3 * 4096);
    const ch = await c.chunk();
    expect(ch.type).toBe(ReplyType.BLOCK_STATUS);
    expect(ch.flags & ReplyFlag.DONE).toBe(ReplyFlag.DONE);
    expect(descriptors(ch.payload)).toEqual([
      [4096, HOLE],
      [4096, 0],
      [4096, HOLE],
    ]);
    c.disconnect();
  });
});

describe("the protocol's edges, from a raw client", () => {
  test("READ answers with one OFFSET_DATA chunk; REQ_ONE gives one descriptor", async () => {
    const c = await structuredClient(true);
    c.request(Cmd.READ, 10 * MiB, 4096);
    const r = await c.chunk();
    expect(r.type).toBe(ReplyType.OFFSET_DATA);
    expect(r.flags).toBe(ReplyFlag.DONE);
    expect(Number(r.payload.readBigUInt64BE(0))).toBe(10 * MiB);
    expect(r.payload.subarray(8).every((b) => b === 0x5a)).toBe(true);
    c.request(Cmd.BLOCK_STATUS, 0, 64 * MiB, { flags: CmdFlag.REQ_ONE });
    expect(descriptors((await c.chunk()).payload)).toEqual([[10 * MiB, HOLE]]);
    c.disconnect();
  });

  test("past the end, zero-length, or without base:allocation selected: an ERROR chunk with EINVAL; the connection goes on", async () => {
    const c = await structuredClient(true);
    for (const [offset, length] of [
      [64 * MiB - 4096, 8192],
      [0, 0],
    ]) {
      c.request(Cmd.BLOCK_STATUS, offset!, length!);
      const e = await c.chunk();
      expect(e.type).toBe(ReplyType.ERROR);
      expect(e.payload.readUInt32BE(0)).toBe(NbdErr.EINVAL);
    }
    c.request(Cmd.READ, 64 * MiB, 4096);
    const e = await c.chunk();
    expect(e.type).toBe(ReplyType.ERROR);
    expect(e.payload.readUInt32BE(0)).toBe(NbdErr.EINVAL);
    c.disconnect();

    const plain = await structuredClient(false);
    plain.request(Cmd.BLOCK_STATUS, 0, 4096);
    const refused = await plain.chunk();
    expect(refused.type).toBe(ReplyType.ERROR);
    expect(refused.payload.readUInt32BE(0)).toBe(NbdErr.EINVAL);
    plain.request(Cmd.READ, 10 * MiB, 16);
    expect((await plain.chunk()).type).toBe(ReplyType.OFFSET_DATA);
    plain.disconnect();
  });

  test("metadata contexts need structured replies first; LIST lists base:allocation; an unknown export is refused", async () => {
    const c = await RawNbd.connect(suite.srv.socket);
    c.sendOption(Opt.SET_META_CONTEXT, metaQuery("vm1", ["base:allocation"]));
    expect((await c.readOptionReply()).type).toBe(Rep.ERR_INVALID);
    c.sendOption(Opt.STRUCTURED_REPLY);
    expect((await c.readOptionReply()).type).toBe(Rep.ACK);
    c.sendOption(Opt.LIST_META_CONTEXT, metaQuery("vm1", []));
    const listed = await c.readOptionReply();
    expect(listed.type).toBe(Rep.META_CONTEXT);
    expect(listed.data.subarray(4).toString()).toBe("base:allocation");
    expect((await c.readOptionReply()).type).toBe(Rep.ACK);
    c.sendOption(Opt.SET_META_CONTEXT, metaQuery("nope", ["base:allocation"]));
    expect((await c.readOptionReply()).type).toBe(Rep.ERR_UNKNOWN);
    c.sendOption(Opt.SET_META_CONTEXT, metaQuery("vm1", ["qemu:dirty-bitmap:x"]));
    expect((await c.readOptionReply()).type).toBe(Rep.ACK); // nothing selected: no context, no error
    c.sendOption(Opt.SET_META_CONTEXT, Buffer.from([0, 0, 0, 9, 1]));
    expect((await c.readOptionReply()).type).toBe(Rep.ERR_INVALID);
    c.sock.end();
  });
});
