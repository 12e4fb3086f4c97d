// Starts `wanmig serve` as a real process, the way an operator does, and waits until its
// control socket answers.
import type { Subprocess } from "bun";
import { afterAll, beforeAll } from "bun:test";
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControlClient } from "../../src/disk/service/control-client.ts";

export const REPO = join(import.meta.dir, "..", "..");
export const MAIN = join(REPO, "src", "main.ts");

export function tempDir(prefix = "wanmig-test-"): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Runs the wanmig CLI (from source) to completion. */
export async function wanmig(args: string[], opts: { env?: Record<string, string> } = {}) {
  const p = Bun.spawn([process.execPath, MAIN, ...args], { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...opts.env } });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { stdout, stderr, code };
}

export interface ServeHandle {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  runDir: string;
  name: string;
  socket: string;
  uri: string;
  ctl: ControlClient;
  stderr(): string;
  stop(): Promise<number>;
}

/**
 * One serve for a whole test file: `fill` prepares its image in a fresh directory before
 * the file's tests, and the serve is stopped and the directory removed after them.
 */
export function serveForSuite(fill: (image: string) => Promise<void> | void, opts: { name?: string } = {}) {
  const suite = {} as { dir: ReturnType<typeof tempDir>; image: string; srv: ServeHandle };
  beforeAll(async () => {
    suite.dir = tempDir();
    suite.image = join(suite.dir.path, "disk.img");
    await fill(suite.image);
    suite.srv = await startServe({ image: suite.image, runDir: suite.dir.path, name: opts.name });
  });
  afterAll(async () => {
    await suite.srv?.stop();
    suite.dir?.remove();
  });
  return suite;
}

/** `prefix`: what runs it (a network namespace's `ip netns exec NS`, say). */
/** `image`: a VM's images, once per disk, in order (exports disk0, disk1, ...). */
export async function startServe(opts: { image: string | string[]; runDir: string; name?: string; args?: string[]; env?: Record<string, string>; prefix?: string[] }): Promise<ServeHandle> {
  const name = opts.name ?? "vm";
  const proc = Bun.spawn([...(opts.prefix ?? []), process.execPath, MAIN, "serve", ...[opts.image].flat().flatMap((i) => ["--image", i]), "--name", name, "--run-dir", opts.runDir, ...(opts.args ?? [])], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...opts.env }, // as it is now (Bun.spawn alone would pass the environment we started with)
  });
  const log = watchStderr(proc, "serve");
  const ctl = new ControlClient(join(opts.runDir, `${name}.ctl`));
  const socket = join(opts.runDir, `${name}.nbd`);
  // The "serving" line comes once both the control and the NBD listener are up.
  await log.waitFor("serving ", 5000);
  return {
    proc,
    runDir: opts.runDir,
    name,
    socket,
    uri: `nbd+unix:///?socket=${socket}`,
    ctl,
    stderr: log.text,
    async stop() {
      proc.kill("SIGTERM");
      return proc.exited;
    },
  };
}

/** Collects a child's stderr and waits for lines in it; fails early if the child exits. */
export function watchStderr(proc: Subprocess<"ignore", "pipe", "pipe">, what: string) {
  let err = "";
  (async () => {
    for await (const chunk of proc.stderr) err += new TextDecoder().decode(chunk);
  })();
  return {
    text: () => err,
    async waitFor(pattern: string | RegExp, timeoutMs = 30_000): Promise<void> {
      const end = Date.now() + timeoutMs;
      const seen = () => (typeof pattern === "string" ? err.includes(pattern) : pattern.test(err));
      while (!seen()) {
        if (proc.exitCode !== null) throw new Error(`${what} exited ${proc.exitCode}: ${err}`);
        if (Date.now() > end) throw new Error(`${what} never said ${pattern}: ${err}`);
        await Bun.sleep(25);
      }
    },
  };
}

/** Runs an external tool and returns its output; throws with stderr on failure. */
export async function sh(argv: string[], opts: { allowFail?: boolean; env?: Record<string, string> } = {}) {
  const p = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...opts.env } });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0 && !opts.allowFail) throw new Error(`${argv.join(" ")} exited ${code}\n${stderr}\n${stdout}`);
  return { stdout, stderr, code };
}

export async function randomFile(path: string, bytes: number): Promise<void> {
  const buf = new Uint8Array(bytes);
  for (let off = 0; off < bytes; off += 65536) crypto.getRandomValues(buf.subarray(off, Math.min(off + 65536, bytes)));
  await Bun.write(path, buf);
}

export async function sparseFile(path: string, bytes: number): Promise<void> {
  await sh(["truncate", "-s", String(bytes), path]);
}

/** Starts `wanmig dest` on an ephemeral port and returns it with the port it bound. */
export async function startDest(opts: { image: string | string[]; runDir: string; name?: string; args?: string[]; port?: number; env?: Record<string, string> }) {
  const name = opts.name ?? "vm";
  const proc = Bun.spawn(
    [process.execPath, MAIN, "dest", "--name", name, ...[opts.image].flat().flatMap((i) => ["--image", i]), "--run-dir", opts.runDir, "--listen", `127.0.0.1:${opts.port ?? 0}`, ...(opts.args ?? [])],
    { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...opts.env } },
  );
  const log = watchStderr(proc, "dest");
  const listening = /listening on [^ ]+:(\d+)/;
  await log.waitFor(listening, 10_000);
  const port = Number(listening.exec(log.text())![1]);
  return {
    proc,
    port,
    name,
    ctl: new ControlClient(join(opts.runDir, `${name}.ctl`)),
    socket: join(opts.runDir, `${name}.nbd`),
    stderr: log.text,
    waitFor: log.waitFor,
    async stop() {
      proc.kill("SIGTERM");
      return proc.exited;
    },
  };
}

export async function secretFile(path: string, content = "a-test-secret-of-enough-length"): Promise<string> {
  await Bun.write(path, content);
  await sh(["chmod", "600", path]);
  return path;
}

/** Writes `data` into a file at `offset` in place (a block of an image changed by hand). */
export function overwrite(path: string, offset: number, data: Uint8Array): void {
  const fd = openSync(path, "r+");
  writeSync(fd, data, 0, data.length, offset);
  closeSync(fd);
}
