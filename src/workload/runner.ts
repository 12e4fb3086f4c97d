// Runs a pattern against a served disk as a VM would, and measures what the VM would
// feel: the longest time without a completed operation (a stall), and the disruption of
// a migration: from the first write refused or lost at the old host until the first
// write that succeeds again (at the same socket, or at `next`, the new host's).

import { NbdClient, NbdClientError } from "../disk/nbd/nbd-client.ts";
import { NbdErr } from "../disk/nbd/nbd-protocol.ts";
import type { Logger } from "../log.ts";
import { pattern, type PatternName } from "./patterns.ts";

export interface WorkloadReport {
  pattern: PatternName;
  seconds: number;
  reads: number;
  writes: number;
  bytesWritten: number;
  longestStallMs: number;
  disruptionMs: number;
  failedOps: number;
  switchedTo?: string;
}

const RECONNECT_EVERY_MS = 20;

const PROGRESS_EVERY_MS = 200;

export async function runWorkload(o: {
  socket: string;
  next?: string;
  pattern: PatternName;
  durationMs: number;
  log: Logger;
  onProgress?: (p: { writes: number; bytesWritten: number; failedOps: number }) => void;
  /** Polled before each operation: true stops issuing I/O (none left in flight) until false again. */
  paused?: () => boolean;
  onPaused?: () => void;
}): Promise<WorkloadReport> {
  let client = await NbdClient.connect(o.socket);
  const r: WorkloadReport = { pattern: o.pattern, seconds: 0, reads: 0, writes: 0, bytesWritten: 0, longestStallMs: 0, disruptionMs: 0, failedOps: 0 };
  const t0 = performance.now();
  let lastDone = t0;
  let disruptedAt: number | undefined;
  // Incompressible and never repeated, as a database's or Bonnie's block writes: a
  // repeated byte is erased by zstd and flatters every migration, and a pool of random
  // bytes reused across the disk is found again by a compressor's long matches. A
  // xorshift fill costs about 0.5 ms per MiB, out of the way of the disk's own speed.
  const buf = new Uint8Array(1024 * 1024);
  const words = new Uint32Array(buf.buffer);
  let x = (Math.random() * 0xffffffff) | 1;
  const payload = (length: number) => {
    for (let i = 0; i < length >>> 2; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x;
    }
    return buf.subarray(0, length);
  };
  const ops = pattern(o.pattern, client.size);
  const progress = o.onProgress && setInterval(() => o.onProgress!({ writes: r.writes, bytesWritten: r.bytesWritten, failedOps: r.failedOps }), PROGRESS_EVERY_MS);
  while (performance.now() - t0 < o.durationMs) {
    if (o.paused?.()) {
      o.onPaused?.();
      while (o.paused()) await Bun.sleep(5);
      lastDone = performance.now();
    }
    const op = ops.next().value!;
    if (op.kind === "pause") {
      await Bun.sleep(op.ms);
      continue;
    }
    try {
      if (op.kind === "read") await client.pread(op.offset, op.length);
      else if (op.kind === "flush") await client.flush();
      else await client.pwrite(op.offset, payload(op.length));
    } catch (err) {
      if (!(err instanceof NbdClientError) || (err.nbdError !== 0 && err.nbdError !== NbdErr.EPERM)) throw err;
      r.failedOps++;
      disruptedAt ??= performance.now();
      client.close();
      client = await reconnect(o, r);
      continue;
    }
    const now = performance.now();
    r.longestStallMs = Math.max(r.longestStallMs, now - lastDone);
    lastDone = now;
    if (op.kind === "read") r.reads++;
    else if (op.kind === "write") {
      r.writes++;
      r.bytesWritten += op.length;
      if (disruptedAt !== undefined) {
        r.disruptionMs += now - disruptedAt;
        disruptedAt = undefined;
        o.log.info(`writes succeed again after ${Math.round(r.disruptionMs)} ms`);
      }
    }
  }
  clearInterval(progress);
  client.close();
  r.seconds = (performance.now() - t0) / 1000;
  r.longestStallMs = Math.round(r.longestStallMs);
  r.disruptionMs = Math.round(r.disruptionMs);
  return r;
}

/** The new host's socket first (the VM has moved), then the old one (it came back). */
async function reconnect(o: { socket: string; next?: string; log: Logger }, r: WorkloadReport): Promise<NbdClient> {
  for (;;) {
    for (const path of [o.next, o.socket]) {
      if (!path) continue;
      try {
        const c = await NbdClient.connect(path);
        if (path === o.next && r.switchedTo !== path) {
          r.switchedTo = path;
          o.log.info(`disk moved: now writing to ${path}`);
        }
        return c;
      } catch {}
    }
    await Bun.sleep(RECONNECT_EVERY_MS);
  }
}
