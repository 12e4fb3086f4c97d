// The destination's side of a migration: an explicit state machine.
//
//   established --HELLO/AUTH--> authenticated --READY--> receiving --BARRIER--> verifying
//        --DONE--> completed            (any error: aborted; the held NBD requests stay held)
//
// Bulk blocks and deltas are applied to the image as they arrive; deltas must come in
// sequence order, with no gap. ACKs report what is applied and on stable storage, so a
// resumed migration never resends it.

import { existsSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { imageSha256 } from "../disk/checksum.ts";
import { FileBackend } from "../disk/file-backend.ts";
import type { Channel } from "../net/channel.ts";
import { decompress } from "../net/compress.ts";
import { ProtocolError } from "../net/errors.ts";
import { DeltaOp, type Hello, msg, MsgType, typeName } from "../net/protocol.ts";
import type { Logger } from "../log.ts";
import { isZero } from "./bulk.ts";
import { ReceiveError } from "./errors.ts";
import { type Credentials, destHandshake } from "./init.ts";

export type ReceiverState =
  | { kind: "established" }
  | { kind: "authenticated"; hello: Hello }
  | { kind: "receiving"; hello: Hello; nextSeq: bigint | undefined }
  | { kind: "completed"; sha256: string }
  | { kind: "aborted"; reason: string };

const ACK_EVERY_MS = 1000;

/** Creates the image (sparse, the source's size) or checks that an existing one fits. */
export function prepareImage(path: string, size: number): { fresh: boolean } {
  if (!existsSync(path)) {
    writeFileSync(path, new Uint8Array(0), { mode: 0o600 });
    truncateSync(path, size);
    return { fresh: true };
  }
  const have = statSync(path).size;
  if (have !== size) throw new ReceiveError(`existing image ${path} is ${have} bytes; the source's is ${size}`);
  return { fresh: false };
}

const PAGE = 4096;

/**
 * Writes a bulk block into a fresh (all-hole) image without allocating its all-zero
 * pages, so the image stays as sparse as the source's. Safe because a fresh image reads
 * zero there already, and any later change to those pages arrives as a delta.
 */
function writeSparse(image: FileBackend, offset: number, data: Uint8Array): void {
  let runStart = -1;
  for (let at = 0; at <= data.length; at += PAGE) {
    const page = at < data.length ? data.subarray(at, Math.min(at + PAGE, data.length)) : undefined;
    const zero = !page || isZero(page);
    if (!zero && runStart < 0) runStart = at;
    if (zero && runStart >= 0) {
      image.write(offset + runStart, data.subarray(runStart, Math.min(at, data.length)), false);
      runStart = -1;
    }
  }
}

export async function receive(
  ch: Channel,
  opts: { image: string; creds: Credentials; log: Logger; onAuthenticated?: (hello: Hello) => Promise<void> },
): Promise<ReceiverState> {
  let state: ReceiverState = { kind: "established" };
  let image: FileBackend | undefined;
  let fresh = false;
  try {
    const hello = await destHandshake(ch, opts.creds);
    state = { kind: "authenticated", hello };
    try {
      fresh = prepareImage(opts.image, hello.size).fresh;
      image = new FileBackend(opts.image, false);
    } catch (cause) {
      await ch.send(msg.error(`destination cannot use ${opts.image}: ${(cause as Error).message}`));
      throw cause;
    }
    await opts.onAuthenticated?.(hello);
    await ch.send(msg.ready(0, 0n));
    state = { kind: "receiving", hello, nextSeq: undefined };
    opts.log.info(`receiving ${hello.name} (${hello.size} bytes) into ${opts.image}`);

    let bulkOffset = 0;
    let lastAck = Date.now();
    for (;;) {
      const m = await ch.recv();
      switch (m.type) {
        case MsgType.BULK:
          checkRange(m.offset, m.length, hello.size);
          {
            const data = m.compressed ? decompress(m.data, m.length) : m.data;
            if (fresh) writeSparse(image, m.offset, data);
            else image.write(m.offset, data, false);
          }
          bulkOffset = Math.max(bulkOffset, m.offset + m.length);
          break;
        case MsgType.ZERO:
          checkRange(m.offset, m.length, hello.size);
          await image.zero(m.offset, m.length, false, true);
          break;
        case MsgType.DELTA: {
          const expected = state.nextSeq;
          if (expected !== undefined && m.seq !== expected) throw new ProtocolError(`delta ${m.seq} arrived, expected ${expected}: deltas must come in order`);
          checkRange(m.offset, m.length, hello.size);
          if (m.op === DeltaOp.DATA) image.write(m.offset, m.compressed ? decompress(m.data, m.length) : m.data, false);
          else await image.zero(m.offset, m.length, false, true);
          state.nextSeq = m.seq + 1n;
          break;
        }
        case MsgType.BARRIER: {
          if (state.nextSeq !== undefined && BigInt(m.lastSeq) !== state.nextSeq - 1n)
            throw new ProtocolError(`barrier says the last delta is ${m.lastSeq}, we applied up to ${state.nextSeq - 1n}`);
          await image.flush();
          const sha = imageSha256(opts.image);
          if (sha !== m.sha256) {
            await ch.send(msg.error("image checksum mismatch after the last delta"));
            throw new ReceiveError(`image checksum mismatch: ours ${sha}, source ${m.sha256}`);
          }
          await ch.send(msg.done(sha));
          opts.log.info(`image verified (sha256 ${sha.slice(0, 16)}…); releasing held I/O`);
          state = { kind: "completed", sha256: sha };
          ch.close();
          return state;
        }
        case MsgType.ERROR:
          throw new ReceiveError(`the source aborted: ${m.message}`);
        default:
          throw new ProtocolError(`unexpected ${typeName(m.type)} while receiving`);
      }
      if (Date.now() - lastAck > ACK_EVERY_MS) {
        await image.flush(); // ACK means durable
        await ch.send(msg.ack(bulkOffset, state.nextSeq ?? 0n));
        lastAck = Date.now();
      }
    }
  } catch (err) {
    state = { kind: "aborted", reason: (err as Error).message };
    throw err instanceof ReceiveError ? err : new ReceiveError("migration aborted", { cause: err });
  } finally {
    image?.close();
  }
}

function checkRange(offset: number, length: number, size: number): void {
  if (offset + length > size) throw new ProtocolError(`write of ${length} bytes at ${offset} is past the ${size}-byte image`);
}
