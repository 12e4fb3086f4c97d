// A writer that hits a served disk as hard as one NBD client can, with incompressible data
// (random bytes, as a database or Bonnie's block writes would give), and remembers what
// was acknowledged: for every 4 KiB block, the first 16 bytes of its last acknowledged
// content. It survives its serve being killed (it stops, keeping what was acknowledged),
// and counts writes refused by a fence.
// It waits for an answer as long as a guest's block layer would (30 s), not a test's 5 s:
// a write paced by a rate cap may take seconds. A write whose answer never came may or may
// not have landed (NBD promises nothing of it): its blocks may hold either content.
//   random4k: 4 KiB at random offsets; seq1m: 1 MiB sequential, wrapping around; seq8m:
//   8 MiB sequential (a guest's block layer merges a large write into requests this big).
import { closeSync, openSync, readSync } from "node:fs";
import { NbdErr } from "../../src/disk/nbd/nbd-protocol.ts";
import { RawNbd } from "./raw-nbd.ts";

export type StressPattern = "random4k" | "seq1m" | "seq8m";
const BLOCK = 4096;
const TAG = 16;
/** Linux's block-layer timeout for a request. */
const ANSWER_TIMEOUT_MS = 30_000;

export interface StressWriter {
  /** 4 KiB block -> what it may hold: the first 16 bytes of its last acknowledged content (and of a later write whose answer never came). */
  acked: Map<number, Buffer[]>;
  readonly writes: number;
  readonly refused: number;
  /** Stops writing (the serve went away, or we were told to) and disconnects. */
  stop(): Promise<void>;
}

/** `pauseMs`: sleep after each write (a gentle writer); without it, as fast as it can. `exportName`: which disk of the VM (default disk0). */
export async function stressWriter(socket: string, opts: { pattern: StressPattern; from?: number; bytes: number; pauseMs?: number; exportName?: string }): Promise<StressWriter> {
  const c = await RawNbd.connect(socket);
  await c.go(opts.exportName);
  const from = opts.from ?? 0;
  const len = opts.pattern === "seq1m" ? 1024 * 1024 : opts.pattern === "seq8m" ? 8 * 1024 * 1024 : BLOCK;
  const slots = Math.floor(opts.bytes / len);
  const acked = new Map<number, Buffer[]>();
  const buf = Buffer.alloc(len);
  const tag = (b: number) => Buffer.from(buf.subarray(b, b + TAG));
  let stopping = false;
  let writes = 0;
  let refused = 0;
  const loop = (async () => {
    for (let i = 0; !stopping; i++) {
      const slot = opts.pattern !== "random4k" ? i % slots : Math.floor(Math.random() * slots);
      for (let at = 0; at < len; at += 65536) crypto.getRandomValues(buf.subarray(at, Math.min(at + 65536, len)));
      const offset = from + slot * len;
      let err: number;
      try {
        err = await c.write(offset, buf, 0, ANSWER_TIMEOUT_MS);
      } catch {
        // The serve went away (or never answered): what was acknowledged stands, and this write may have landed.
        for (let b = 0; b < len; b += BLOCK) acked.get((offset + b) / BLOCK)?.push(tag(b));
        return;
      }
      writes++;
      if (err === 0) for (let b = 0; b < len; b += BLOCK) acked.set((offset + b) / BLOCK, [tag(b)]);
      else if (err === NbdErr.EPERM) refused++;
      else throw new Error(`write failed with NBD error ${err}`);
      if (opts.pauseMs) await Bun.sleep(opts.pauseMs);
      else if (i % 64 === 63) await Bun.sleep(0); // let the test's other work run
    }
  })();
  return {
    acked,
    get writes() {
      return writes;
    },
    get refused() {
      return refused;
    },
    async stop() {
      if (!stopping) {
        stopping = true;
        await loop;
        try {
          c.disconnect();
        } catch {}
      }
      await loop;
    },
  };
}

/** Merges acknowledged maps in the order they were written: a later writer's blocks win. */
export function mergeAcked(...maps: Map<number, Buffer[]>[]): Map<number, Buffer[]> {
  const out = new Map<number, Buffer[]>();
  for (const m of maps) for (const [k, v] of m) out.set(k, v);
  return out;
}

/** The blocks of `image` (a file) whose content is not the last acknowledged one (nor that of a later write left unanswered). */
export function lostWrites(image: string, acked: Map<number, Buffer[]>): number[] {
  const fd = openSync(image, "r");
  const tag = Buffer.alloc(TAG);
  const lost: number[] = [];
  try {
    for (const [block, want] of acked) {
      readSync(fd, tag, 0, TAG, block * BLOCK);
      if (!want.some((w) => tag.equals(w))) lost.push(block);
    }
  } finally {
    closeSync(fd);
  }
  return lost;
}
