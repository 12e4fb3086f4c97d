// Two "hosts" on loopback for migration tests: serve on A, dest on B, a writer, the source's argv.
import { expect } from "bun:test";
import { join } from "node:path";
import { NbdErr } from "../../src/disk/nbd/nbd-protocol.ts";
import { RawNbd } from "./raw-nbd.ts";
import { lostWrites } from "./stress-writer.ts";
import { MAIN, randomFile, secretFile, type ServeHandle, sh, sparseFile, startDest, startServe, tempDir, wanmig, watchStderr } from "./serve-process.ts";

export type DestHandle = Awaited<ReturnType<typeof startDest>>;

export const MiB = 1024 * 1024;
let dir: ReturnType<typeof tempDir> | undefined;
let n = 0;

/** Removes every host directory made so far (call from afterAll). */
export function removeHosts(): void {
  dir?.remove();
  dir = undefined;
}

/** Two "hosts": directories A and B, each with its own run dir. */
export async function hosts(sizeMiB: number, dataMiB: number) {
  dir ??= tempDir();
  const id = n++;
  const a = join(dir!.path, `A${id}`);
  const b = join(dir!.path, `B${id}`);
  await sh(["mkdir", "-p", a, b]);
  const image = join(a, "vm.img");
  await sparseFile(image, sizeMiB * MiB);
  if (dataMiB) {
    await randomFile(join(a, "data"), dataMiB * MiB);
    await sh(["dd", `if=${join(a, "data")}`, `of=${image}`, "conv=notrunc", "status=none"]);
  }
  const secret = await secretFile(join(dir!.path, `secret${id}`));
  return { a, b, image, destImage: join(b, "vm.img"), secret };
}

export type Hosts = Awaited<ReturnType<typeof hosts>>;

/**
 * `serve` on host A and `dest` on host B around `body`; both stopped whatever happens, the
 * serve too when dest fails to start. A VM with several disks: `image` and `destImage` list them.
 */
export async function withPair(
  h: Pick<Hosts, "a" | "b"> & { image: string | string[]; destImage: string | string[] },
  body: (p: { srv: ServeHandle; dst: DestHandle }) => Promise<void>,
  destArgs: string[] = ["--insecure"],
): Promise<void> {
  const srv = await startServe({ image: h.image, runDir: h.a });
  try {
    const dst = await startDest({ image: h.destImage, runDir: h.b, args: destArgs });
    try {
      await body({ srv, dst });
    } finally {
      await dst.stop();
    }
  } finally {
    await srv.stop();
  }
}

/** The argv of `wanmig source` for host A's disk, sent to a port on loopback. */
export function sourceArgs(h: Hosts, port: number, extra: string[]): string[] {
  return ["source", "--name", "vm", "--run-dir", h.a, "--to", `127.0.0.1:${port}`, ...extra];
}

export function source(h: Hosts, port: number, extra: string[]) {
  return wanmig(sourceArgs(h, port, extra));
}

/** The last NDJSON event on stdout: the final metrics. */
export function lastEvent(stdout: string) {
  return JSON.parse(stdout.trim().split("\n").at(-1)!);
}

/**
 * A move with a hypervisor, from the NDJSON of `source --json` and `dest --json`: the final
 * metrics, when the VM paused at the source (or the hypervisor said it had left), and when
 * it ran at the destination. Both on this host's clock.
 */
export function moveTimes(sourceOut: string, destOut: string): { done: Record<string, any>; pausedAt: number; runningAt: number } {
  const events = sourceOut.trim().split("\n").map((l) => JSON.parse(l));
  const running = destOut.trim().split("\n").find((l) => l.includes('"running"'));
  if (!running) throw new Error(`the destination never said its VM runs: ${destOut}`);
  return { done: events.at(-1), pausedAt: events.find((e) => e.event === "paused").at, runningAt: JSON.parse(running).at };
}

/** A writer that keeps writing numbered blocks and remembers what was acknowledged. */
export async function writer(socket: string, sizeBytes: number) {
  const c = await RawNbd.connect(socket);
  await c.go();
  const acked = new Map<number, number>(); // block -> last acknowledged fill byte
  let stop = false;
  let refused = 0;
  const done = (async () => {
    for (let i = 1; !stop; i++) {
      const block = Math.floor(Math.random() * (sizeBytes / 4096));
      const fill = (i % 250) + 1;
      const err = await c.write(block * 4096, Buffer.alloc(4096, fill));
      if (err === 0) acked.set(block, fill);
      else if (err === NbdErr.EPERM) refused++;
      else throw new Error(`write failed with ${err}`);
      if (i % 8 === 0) await Bun.sleep(1);
    }
  })();
  return {
    acked,
    get refused() {
      return refused;
    },
    /** Stops writing and disconnects; safe to call again. */
    async stop() {
      if (stop) return done;
      stop = true;
      await done;
      c.disconnect();
    },
  };
}

/** `wanmig source --json` running in the background: its events as they come, its stderr. */
export function spawnSource(h: Hosts, port: number, extra: string[], env: Record<string, string> = {}) {
  const proc = Bun.spawn([process.execPath, MAIN, ...sourceArgs(h, port, ["--json", ...extra])], { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
  const err = watchStderr(proc, "source");
  let out = "";
  (async () => {
    for await (const chunk of proc.stdout) out += new TextDecoder().decode(chunk);
  })();
  const events = () => out.split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  return {
    proc,
    stderr: err.text,
    events,
    /** Resolves with the first event that matches; fails if the source exits first. */
    async waitEvent(match: (e: Record<string, unknown>) => boolean, timeoutMs = 30_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const e = events().find(match);
        if (e) return e;
        if (proc.exitCode !== null) throw new Error(`source exited ${proc.exitCode} first: ${err.text()}`);
        if (Date.now() > end) throw new Error(`no such event from the source: ${out}`);
        await Bun.sleep(10);
      }
    },
    /** Exit code and the final event, once it ends. */
    async result() {
      const code = await proc.exited;
      await Bun.sleep(50); // let the stdout reader take the last line
      return { code, stderr: err.text(), done: events().find((e) => e.event === "done") };
    },
  };
}

/** Reads back every write the writer saw acknowledged; returns the blocks that differ. */
export async function missingWrites(socket: string, acked: Map<number, number>): Promise<number[]> {
  const c = await RawNbd.connect(socket);
  await c.go();
  const missing: number[] = [];
  for (const [block, fill] of acked) if ((await c.read(block * 4096, 4096)).data![0] !== fill) missing.push(block);
  c.disconnect();
  return missing;
}

/** The NBD error a 4 KiB write at `offset` gets from the disk behind `socket` (0: written). */
export async function writeError(socket: string, offset = 0, exportName = ""): Promise<number> {
  const c = await RawNbd.connect(socket);
  await c.go(exportName);
  const err = await c.write(offset, Buffer.alloc(4096, 7));
  c.disconnect();
  return err;
}

/**
 * True when the disk behind `socket` takes a write now (not fenced, not held). It writes
 * the export's last sector, out of the way of the tests' writers, which start at 0.
 */
export async function writable(socket: string, exportName = ""): Promise<boolean> {
  const c = await RawNbd.connect(socket);
  await c.go(exportName);
  const err = await c.write(c.size - 512, Buffer.alloc(512, 9));
  c.disconnect();
  return err === 0;
}

/** The disk runs at exactly one host: fenced at the source, writable at the destination. */
export async function expectMovedOnce(srcSocket: string, dstSocket: string): Promise<void> {
  expect(await writeError(srcSocket)).toBe(NbdErr.EPERM);
  expect(await writable(dstSocket)).toBe(true);
}

/** A source run that lost its link once: it finished (exit 0), having resumed from where the destination got. */
export function expectResumedOnce(r: { code: number | null; stderr: string; done?: Record<string, unknown> }): void {
  expect(r.code, r.stderr).toBe(0);
  expect(r.stderr).toContain("resumed: destination has bulk up to");
  expect(r.done?.reconnects).toBe(1);
}

/** Every migration's final check: byte-identical, no acknowledged write lost, the disk at exactly one host. */
export async function expectMovedWhole(h: Hosts, acked: Map<number, Buffer[]>, srcSocket: string, dstSocket: string): Promise<void> {
  await sh(["cmp", h.image, h.destImage]);
  expect(lostWrites(h.destImage, acked)).toEqual([]);
  await expectMovedOnce(srcSocket, dstSocket);
}
