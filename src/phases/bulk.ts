// Phase 2, bulk: copy the image while the VM runs. Record mode is already on, so every
// block this copy reads too early is fixed by a later delta. All-zero blocks are not
// sent: the destination's image is sparse and keeps them as holes.

import { FileBackend } from "../disk/file-backend.ts";
import type { Channel } from "../net/channel.ts";
import { maybeCompress } from "../net/compress.ts";
import { msg } from "../net/protocol.ts";
import { BULK_CHUNK } from "./coalesce.ts";
import { BulkError } from "./errors.ts";
import { isZero } from "../util/zero.ts";

export interface BulkProgress {
  offset: number;
  size: number;
  /** Image bytes sent, before compression. */
  bytesSent: number;
  /** The same blocks as they crossed the wire (payload bytes, after compression). */
  wireBytes: number;
  dataBlocks: number;
  zeroBlocks: number;
}

const READ_CHUNK = BULK_CHUNK;

export async function sendBulk(
  ch: Channel,
  imagePath: string,
  opts: {
    from: number;
    blockSize: number;
    compress: boolean;
    onProgress?: (p: BulkProgress) => void;
    /** Called just before each chunk is read (coalesce mode notes the delta log's length). */
    beforeRead?: (offset: number) => void;
    /** Called with each chunk as read (the image digest hashes it). */
    afterRead?: (offset: number, chunk: Uint8Array) => void;
  },
): Promise<BulkProgress> {
  let image: FileBackend;
  try {
    image = new FileBackend(imagePath, true);
  } catch (cause) {
    throw new BulkError(`cannot open ${imagePath}`, { cause });
  }
  const p: BulkProgress = { offset: opts.from, size: image.size, bytesSent: 0, wireBytes: 0, dataBlocks: 0, zeroBlocks: 0 };
  const buf = Buffer.allocUnsafe(READ_CHUNK);
  try {
    while (p.offset < p.size) {
      // Chunks stay aligned to READ_CHUNK, also when resuming mid-chunk (coalesce.ts relies on it).
      const n = Math.min(READ_CHUNK - (p.offset % READ_CHUNK), p.size - p.offset);
      const chunk = buf.subarray(0, n);
      opts.beforeRead?.(p.offset);
      image.read(p.offset, chunk);
      opts.afterRead?.(p.offset, chunk);
      for (let at = 0; at < n; at += opts.blockSize) {
        const block = chunk.subarray(at, Math.min(at + opts.blockSize, n));
        if (isZero(block)) {
          p.zeroBlocks++;
          continue;
        }
        // Copy: the read buffer is reused for the next chunk while frames may still queue.
        const out = opts.compress ? maybeCompress(block) : { data: block, compressed: false };
        await ch.send(msg.bulk(p.offset + at, block.length, out.compressed ? out.data : Buffer.from(block), out.compressed));
        p.wireBytes += out.data.length;
        p.dataBlocks++;
        p.bytesSent += block.length;
      }
      p.offset += n;
      opts.onProgress?.(p);
    }
  } finally {
    image.close();
  }
  return p;
}
