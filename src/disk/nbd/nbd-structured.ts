// Structured replies and the base:allocation metadata context (NBD_CMD_BLOCK_STATUS), so a
// client can learn where the holes are instead of reading them: `nbdinfo --map`, `nbdcopy`
// and `qemu-img convert` on a running VM's disk read only its data, as with nbdkit and
// qemu-nbd. The layouts follow nbd's doc/proto.md.

import type { Extent } from "../block/vocabulary.ts";
import { AllocationState, BASE_ALLOCATION, ReplyFlag, ReplyType, STRUCTURED_REPLY_HEADER_LEN, STRUCTURED_REPLY_MAGIC } from "./nbd-protocol.ts";

/** The id we give base:allocation when a client selects it (0 is what LIST replies carry). */
const ALLOCATION_CONTEXT_ID = 1;

/** NBD_REP_META_CONTEXT naming base:allocation: with its id when selected, 0 when listed. */
export function allocationContextReply(listing: boolean): Buffer {
  const name = Buffer.from(BASE_ALLOCATION, "utf8");
  const b = Buffer.alloc(4 + name.length);
  b.writeUInt32BE(listing ? 0 : ALLOCATION_CONTEXT_ID, 0);
  name.copy(b, 4);
  return b;
}

/** A chunk's header, room left for `payload` bytes after it. */
function chunk(cookie: Uint8Array, type: number, payload: number, done: boolean, alloc: (n: number) => Buffer = Buffer.allocUnsafe): Buffer {
  const b = alloc(STRUCTURED_REPLY_HEADER_LEN + payload);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(done ? ReplyFlag.DONE : 0, 4);
  b.writeUInt16BE(type, 6);
  b.set(cookie, 8);
  b.writeUInt32BE(payload, 16);
  return b;
}

/** A READ's whole answer as one OFFSET_DATA chunk: the data is read straight into it (a buffer from `alloc`). */
export function readChunk(cookie: Uint8Array, offset: number, length: number, fill: (into: Uint8Array) => void, alloc?: (n: number) => Buffer): Buffer {
  const b = chunk(cookie, ReplyType.OFFSET_DATA, 8 + length, true, alloc);
  b.writeBigUInt64BE(BigInt(offset), STRUCTURED_REPLY_HEADER_LEN);
  fill(b.subarray(STRUCTURED_REPLY_HEADER_LEN + 8));
  return b;
}

/** A failed READ or BLOCK_STATUS: an ERROR chunk that ends the reply. */
export function errorChunk(cookie: Uint8Array, error: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, 1024), "utf8");
  const b = chunk(cookie, ReplyType.ERROR, 6 + text.length, true);
  b.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_LEN);
  b.writeUInt16BE(text.length, STRUCTURED_REPLY_HEADER_LEN + 4);
  text.copy(b, STRUCTURED_REPLY_HEADER_LEN + 6);
  return b;
}

/** BLOCK_STATUS for base:allocation: a descriptor per extent (holes read as zeros). */
export function blockStatusChunk(cookie: Uint8Array, extents: Extent[]): Buffer {
  const b = chunk(cookie, ReplyType.BLOCK_STATUS, 4 + 8 * extents.length, true);
  let at = STRUCTURED_REPLY_HEADER_LEN;
  b.writeUInt32BE(ALLOCATION_CONTEXT_ID, at);
  at += 4;
  for (const e of extents) {
    b.writeUInt32BE(e.length, at);
    b.writeUInt32BE(e.hole ? AllocationState.HOLE | AllocationState.ZERO : 0, at + 4);
    at += 8;
  }
  return b;
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT's data. */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/** Parses the option's data; a string says what is malformed. */
export function parseMetaContextRequest(data: Buffer): MetaContextRequest | string {
  if (data.length < 8) return "truncated request";
  const nameLen = data.readUInt32BE(0);
  if (4 + nameLen + 4 > data.length) return "export name length past the data";
  const exportName = data.subarray(4, 4 + nameLen).toString("utf8");
  const count = data.readUInt32BE(4 + nameLen);
  const queries: string[] = [];
  let at = 8 + nameLen;
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return "query count past the data";
    const len = data.readUInt32BE(at);
    if (at + 4 + len > data.length) return "query length past the data";
    queries.push(data.subarray(at + 4, at + 4 + len).toString("utf8"));
    at += 4 + len;
  }
  if (at !== data.length) return "trailing bytes after the queries";
  return { exportName, queries };
}

/**
 * Whether the queries select base:allocation. LIST with no query lists every context, and
 * a bare namespace ("base:") lists that namespace; SET selects only what it names.
 */
export function selectsAllocation(queries: string[], listing: boolean): boolean {
  if (listing && queries.length === 0) return true;
  return queries.some((q) => q === BASE_ALLOCATION || (listing && q === "base:"));
}
