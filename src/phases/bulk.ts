// Phase 2, bulk: copy the image while the VM runs. Record mode is already on, so every
// block this copy reads too early is fixed by a later delta. All-zero blocks are not
// sent: the destination's image is sparse and keeps them as holes. Against a base (the
// destination's image already has content), blocks the base already holds are not sent
// either, and all-zero blocks travel as ZERO where the base has something else there.
// Holes are not read at all: the file system says where data is (extents.ts), so a thin
// disk costs what its data costs. A chunk taken for a hole is not noted as read for
// coalescing, so a write landing there during the copy always travels as a delta.
// In coalesce mode the recording's cursor is raised past a range before anything about it
// is decided (recording.ts): what the VM writes past the cursor is logged without data,
// and this copy carries it.

import { describeImages, type ImageFile, type ImageRef, openImage } from "../disk/image/image-set.ts";
import type { Channel } from "../net/channel.ts";
import type { Compressor } from "../net/compress.ts";
import { BASE_HASH_LEN, msg } from "../net/protocol.ts";
import { isZero } from "../util/zero.ts";
import { GcNudge } from "../util/gc.ts";
import { blockHash, chunkLength, receiveBaseHashes, zeroBlockHash } from "./base-hashes.ts";
import { BulkError } from "./errors.ts";
import { BULK_CHUNK } from "./coalesce.ts";

export interface BulkProgress {
  offset: number;
  size: number;
  /** Image bytes sent, before compression. */
  bytesSent: number;
  /** The same blocks as they crossed the wire (payload bytes, after compression). */
  wireBytes: number;
  dataBlocks: number;
  zeroBlocks: number;
  /** Blocks the destination's base already held (not sent). */
  baseBlocks: number;
  /** Image bytes in holes, skipped without being read (counted in zeroBlocks too). */
  holeBytes: number;
}

function sameHash(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** The destination's base hash of block `i` of a chunk, if it streams them. */
function baseHashOf(theirs: Uint8Array | undefined, i: number): Uint8Array | undefined {
  return theirs?.subarray(i * BASE_HASH_LEN, (i + 1) * BASE_HASH_LEN);
}

/** An all-zero block: not sent, unless the destination's base holds something else there (then ZERO). */
async function sendZeroBlock(ch: Channel, p: BulkProgress, offset: number, length: number, baseHash: Uint8Array | undefined): Promise<void> {
  p.zeroBlocks++;
  if (baseHash && !sameHash(baseHash, zeroBlockHash(length))) await ch.send(msg.zero(offset, length));
}

/** `n` bytes of hole: all zero blocks, and nothing read (nor, without a base, sent). */
async function sendHole(ch: Channel, p: BulkProgress, n: number, blockSize: number, theirs: Uint8Array | undefined): Promise<void> {
  if (theirs) for (let at = 0, i = 0; at < n; at += blockSize, i++) await sendZeroBlock(ch, p, p.offset + at, Math.min(blockSize, n - at), baseHashOf(theirs, i));
  else p.zeroBlocks += Math.ceil(n / blockSize);
  p.holeBytes += n;
}

/** From `offset` (a chunk start) to the last chunk boundary before data at `dataAt`, or to the end. */
function holeRun(offset: number, dataAt: number, size: number): number {
  return (dataAt >= size ? size : dataAt - (dataAt % BULK_CHUNK)) - offset;
}

/**
 * Consecutive data blocks go as one BULK frame of up to a whole chunk: zstd finds more to
 * share in more data (16 MiB of shared libraries at level 19: 0.302 of their size in 1 MiB
 * units, 0.292 in 4 MiB, 0.283 as one stream; in 64 KiB, 0.33), and a frame costs its
 * header, CRC and send once per run instead of once per block.
 */
const RUN_MAX = BULK_CHUNK;

/**
 * How far past the range about to be decided the recording's cursor is raised: one control
 * call per 16 MiB, not per chunk. Writes in the lead are logged whole, and carried by the
 * copy as well (coalescing drops them).
 */
const CURSOR_LEAD = 16 * 1024 * 1024;

/** A chunk read from the image, block by block: zeros skipped, the base's blocks skipped, runs of the rest sent. */
async function sendChunk(ch: Channel, p: BulkProgress, chunk: Uint8Array, blockSize: number, z: Compressor, theirs: Uint8Array | undefined): Promise<void> {
  let runFrom = 0;
  let runLength = 0;
  const flush = async () => {
    if (!runLength) return;
    // No copy: send() frames the data before its first wait, and the buffer is read into again only after.
    const run = chunk.subarray(runFrom, runFrom + runLength);
    const out = await z.compress(run, true);
    await ch.send(msg.bulk(p.offset + runFrom, runLength, out.data, out.compressed, out.streamed));
    p.wireBytes += out.data.length;
    p.bytesSent += runLength;
    runLength = 0;
  };
  for (let at = 0, i = 0; at < chunk.length; at += blockSize, i++) {
    const block = chunk.subarray(at, Math.min(at + blockSize, chunk.length));
    const baseHash = baseHashOf(theirs, i);
    if (isZero(block)) {
      await flush();
      await sendZeroBlock(ch, p, p.offset + at, block.length, baseHash);
      continue;
    }
    if (baseHash && sameHash(baseHash, blockHash(block))) {
      await flush();
      p.baseBlocks++;
      continue;
    }
    if (!runLength) runFrom = at;
    runLength += block.length;
    p.dataBlocks++;
    if (runLength >= RUN_MAX) await flush();
  }
  await flush();
}

export async function sendBulk(
  ch: Channel,
  images: ImageRef,
  opts: {
    from: number;
    blockSize: number;
    compress: Compressor;
    /** The destination has a base image and streams its block hashes. */
    base?: boolean;
    onProgress?: (p: BulkProgress) => void;
    /** Called (and awaited) before each chunk, read or hole: interruption, the throttle's failures, a freeze at the deadline. */
    beforeChunk?: () => void | Promise<void>;
    /**
     * Coalesce mode: raises the recording's cursor to `offset` (and resolves once the serve
     * has it). Nothing is decided about a range, neither where its holes are nor what it
     * holds, before the cursor is past it (recording.ts).
     */
    raiseCursor?: (offset: number) => Promise<void>;
    /** Called just before each chunk is read (coalesce mode notes the delta log's length); not for holes. */
    beforeRead?: (offset: number) => void;
    /** Called with each chunk as read (the image digest hashes it). */
    afterRead?: (offset: number, chunk: Uint8Array) => void;
  },
): Promise<BulkProgress> {
  let image: ImageFile;
  try {
    image = openImage(images, true);
  } catch (cause) {
    throw new BulkError(`cannot open ${describeImages(images)}`, { cause });
  }
  const p: BulkProgress = { offset: opts.from, size: image.size, bytesSent: 0, wireBytes: 0, dataBlocks: 0, zeroBlocks: 0, baseBlocks: 0, holeBytes: 0 };
  const holes = image.holeFinder();
  const buf = Buffer.allocUnsafe(chunkLength(0, Number.MAX_SAFE_INTEGER));
  const gc = new GcNudge();
  let cursor = 0;
  /** This step's extent: a chunk of data, or a run of holes. */
  const step = () => {
    const n = chunkLength(p.offset, p.size);
    const dataAt = holes.dataFrom(p.offset);
    const hole = dataAt >= p.offset + n;
    // Without a base, a hole sends nothing: a run of hole chunks is one step (a 100 GiB
    // thin image is 25600 chunks). A base's hashes come chunk by chunk.
    return { hole, n: hole && !opts.base ? holeRun(p.offset, dataAt, p.size) : n };
  };
  try {
    while (p.offset < p.size) {
      await opts.beforeChunk?.();
      let { hole, n } = step();
      // The hole finder's answers date from the cursor's last rise: true for what lies
      // behind the cursor (writes since are logged whole), not past it (AHEAD writes may
      // have landed there since). So past it: raise it, forget, and ask again.
      while (opts.raiseCursor && p.offset + n > cursor) {
        cursor = Math.min(p.size, p.offset + n + CURSOR_LEAD);
        await opts.raiseCursor(cursor);
        holes.forget();
        ({ hole, n } = step());
      }
      const theirs = opts.base ? await receiveBaseHashes(ch, p.offset, Math.ceil(n / opts.blockSize)) : undefined;
      if (hole) await sendHole(ch, p, n, opts.blockSize, theirs);
      else {
        const chunk = buf.subarray(0, n);
        opts.beforeRead?.(p.offset);
        image.read(p.offset, chunk);
        opts.afterRead?.(p.offset, chunk);
        await sendChunk(ch, p, chunk, opts.blockSize, opts.compress, theirs);
        gc.add(n);
      }
      p.offset += n;
      opts.onProgress?.(p);
    }
  } finally {
    image.close();
    opts.compress.close(); // the stream's window serves the bulk only (zstd-stream.ts)
  }
  return p;
}
