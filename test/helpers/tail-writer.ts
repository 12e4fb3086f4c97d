// A writer for a disk whose size is no multiple of the migration's block: it rewrites the
// disk's last bytes as fast as it can, in requests that end exactly at the disk's end (1 byte,
// a sector, the partial block, and ranges that cross from the last whole block into it), and
// keeps a shadow of what was acknowledged there. The destination's tail must equal the
// shadow: a write answered is there, a write refused by the fence is not.
import { closeSync, openSync, readSync } from "node:fs";
import { NbdErr } from "../../src/disk/nbd/nbd-protocol.ts";
import { RawNbd } from "./raw-nbd.ts";

const ANSWER_TIMEOUT_MS = 30_000;

export interface TailWriter {
  readonly writes: number;
  readonly refused: number;
  stop(): Promise<void>;
  /** The offsets (from the disk's end) where `image` differs from what was acknowledged; [] when none. */
  lost(image: string): number[];
}

/** `span`: how many of the disk's last bytes it writes (the shadow's size). */
export async function tailWriter(socket: string, opts: { exportName?: string; span: number; pauseMs?: number }): Promise<TailWriter> {
  const c = await RawNbd.connect(socket);
  await c.go(opts.exportName);
  const size = c.size;
  const span = Math.min(opts.span, size);
  const lengths = [1, 511, 512, span % 65536 || 4096, 4096 + 7, span].filter((n) => n > 0 && n <= span);
  // The shadow starts as the disk's current tail (read through the same connection).
  const first = await c.read(size - span, span);
  if (first.error) throw new Error(`reading the tail failed with NBD error ${first.error}`);
  const shadow = Buffer.from(first.data!);
  let stopping = false;
  let writes = 0;
  let refused = 0;
  const loop = (async () => {
    for (let i = 0; !stopping; i++) {
      const len = lengths[i % lengths.length]!;
      const data = crypto.getRandomValues(new Uint8Array(len));
      const err = await c.write(size - len, data, 0, ANSWER_TIMEOUT_MS).catch(() => -1);
      if (err === -1) return; // the serve went away: what was acknowledged stands
      writes++;
      if (err === 0) shadow.set(data, span - len);
      else if (err === NbdErr.EPERM) refused++;
      else throw new Error(`tail write failed with NBD error ${err}`);
      if (opts.pauseMs) await Bun.sleep(opts.pauseMs);
      else if (i % 32 === 31) await Bun.sleep(0);
    }
  })();
  return {
    get writes() {
      return writes;
    },
    get refused() {
      return refused;
    },
    async stop() {
      stopping = true;
      await loop;
      try {
        c.disconnect();
      } catch {}
    },
    lost(image) {
      const fd = openSync(image, "r");
      const got = Buffer.alloc(span);
      try {
        readSync(fd, got, 0, span, size - span);
      } finally {
        closeSync(fd);
      }
      const out: number[] = [];
      for (let i = 0; i < span && out.length < 8; i++) if (got[i] !== shadow[i]) out.push(span - i);
      return out;
    },
  };
}
