// Bulk copy against a destination image that already has content (a template, an older
// copy of this disk, or what an interrupted run left): the destination hashes its blocks,
// one BASE_HASHES message per bulk chunk, and the source sends only blocks that differ.
//
// Ordering (why reading the destination image here races with nothing): the destination
// hashes chunk X before sending its hashes, and the source writes into chunk X only after
// receiving them; deltas come after the whole bulk copy.

import { type ImageRef, openImage } from "../disk/image/image-set.ts";
import type { Channel } from "../net/channel.ts";
import { ProtocolError } from "../net/errors.ts";
import { BASE_HASH_LEN, msg, MsgType, typeName } from "../net/protocol.ts";
import { BULK_CHUNK } from "./coalesce.ts";
import { BulkError } from "./errors.ts";

/** 128 bits of SHA-256: collisions stay out of reach (2^64 work) at half the bytes on the wire. */
export function blockHash(block: Uint8Array): Uint8Array {
  return new Bun.CryptoHasher("sha256").update(block).digest().subarray(0, BASE_HASH_LEN);
}

const zeroHashes = new Map<number, Uint8Array>();
/** The hash of an all-zero block of this length (the common case in a sparse base). */
export function zeroBlockHash(length: number): Uint8Array {
  let h = zeroHashes.get(length);
  if (!h) zeroHashes.set(length, (h = blockHash(new Uint8Array(length))));
  return h;
}

/** Where a bulk copy resumes: the destination's offset, back to a block boundary. Both sides use it. */
export function bulkResumeOffset(bulkOffset: number, blockSize: number): number {
  return bulkOffset - (bulkOffset % blockSize);
}

/** Chunks stay aligned to BULK_CHUNK, also when resuming mid-chunk (coalesce.ts relies on it). */
export function chunkLength(offset: number, size: number): number {
  return Math.min(BULK_CHUNK - (offset % BULK_CHUNK), size - offset);
}

/** The destination's side: hashes of its image from `from` to the end, chunk by chunk. */
export async function sendBaseHashes(ch: Channel, images: ImageRef, from: number, blockSize: number): Promise<void> {
  const image = openImage(images, true);
  const buf = Buffer.allocUnsafe(BULK_CHUNK);
  try {
    for (let at = from; at < image.size; ) {
      const n = chunkLength(at, image.size);
      const chunk = buf.subarray(0, n);
      image.read(at, chunk);
      const hashes = new Uint8Array(Math.ceil(n / blockSize) * BASE_HASH_LEN);
      for (let b = 0, i = 0; b < n; b += blockSize, i++) hashes.set(blockHash(chunk.subarray(b, Math.min(b + blockSize, n))), i * BASE_HASH_LEN);
      await ch.send(msg.baseHashes(at, hashes));
      at += n;
    }
  } finally {
    image.close();
  }
}

/** The source's side: the destination's hashes for the chunk at `offset` (ACKs in between are skipped). */
export async function receiveBaseHashes(ch: Channel, offset: number, blocks: number): Promise<Uint8Array> {
  for (;;) {
    const m = await ch.recv(10 * 60 * 1000);
    if (m.type === MsgType.ACK) continue;
    if (m.type !== MsgType.BASE_HASHES) throw new ProtocolError(`expected BASE_HASHES, got ${typeName(m.type)}`);
    if (m.offset !== offset || m.hashes.length !== blocks * BASE_HASH_LEN)
      throw new ProtocolError(`BASE_HASHES for ${m.hashes.length / BASE_HASH_LEN} blocks at ${m.offset}; expected ${blocks} at ${offset}`);
    return m.hashes;
  }
}
