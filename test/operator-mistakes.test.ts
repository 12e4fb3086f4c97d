// An operator's mistakes, each as a real process (issue 29): a busy or foreign port, a path
// that is not there, a name nobody serves, a secret or certificate that will not do, a value
// that does not parse. Each gets one line that names the thing, a hint, and its documented
// exit code (src/errors.ts); never a stack trace, never exit 1 ("a bug").
// test/cli.test.ts has the first rows of this kind (a missing image, a name served twice,
// unknown and repeated flags); they are not repeated here.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { TCPSocketListener } from "bun";
import { ExitCode } from "../src/errors.ts";
import { MAIN, randomFile, secretFile, type ServeHandle, sh, sparseFile, startDest, startServe, tempDir, wanmig, watchStderr } from "./helpers/serve-process.ts";

interface Result {
  stdout: string;
  stderr: string;
  code: number;
}

interface Row {
  what: string;
  argv: string[];
  code: number;
  /** What the error's first line must name: the port, the path, the name, the flag. */
  names: string | RegExp;
  /** Must say this too (why). */
  says?: string | RegExp;
  /** A hint line is expected (usage errors that explain themselves have none). */
  hint?: boolean;
  /** Lines come before the error (a source's progress, migrate's checks). */
  logsFirst?: boolean;
  /** Run by this prefix (runuser -u nobody --). */
  prefix?: string[];
  /** Skipped when false (a tool missing, not root). */
  when?: boolean;
  check?: (r: Result) => void;
}

// Made at load, so that the rows (which name their paths and the busy port) are known when
// the tests are declared; the files in it are made in beforeAll.
const dir = tempDir("wanmig-mistakes-");
/** Another process's port, to the wanmig under test: this test's own listener. */
const busy: TCPSocketListener<unknown> = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
const serves: ServeHandle[] = [];
const results = new Map<string, Promise<Result>>();
const p = (...parts: string[]) => join(dir.path, ...parts);
const isRoot = process.getuid?.() === 0;
const canRunAsNobody = isRoot && !!Bun.which("runuser");

/** A row that does not end (a dest listening on, happily) is killed, and fails as such. */
const ROW_LIMIT_MS = 30_000;

async function run(row: Row): Promise<Result> {
  const proc = Bun.spawn([...(row.prefix ?? []), process.execPath, MAIN, ...row.argv], { stdout: "pipe", stderr: "pipe" });
  const limit = setTimeout(() => proc.kill("SIGKILL"), ROW_LIMIT_MS);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(limit);
  return { stdout, stderr: proc.signalCode === "SIGKILL" ? `${stderr}\n(still running after ${ROW_LIMIT_MS} ms: killed)` : stderr, code };
}

function rows(): Row[] {
  const port = busy.port;
  const pem = (n: string) => p("tls", n);
  const tls = (cert: string, key: string, ca: string) => ["--tls", "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca];
  const destArgs = (...more: string[]) => ["dest", "--name", "in", "--image", p("in.img"), "--run-dir", p("destrun"), ...more];
  const sourceArgs = (name: string, ...more: string[]) => ["source", "--name", name, "--run-dir", p("run"), ...more];
  const notListening = (r: Result) => expect(r.stderr).not.toContain("listening on");
  return [
    // serve
    { what: "serve: --nbd on a TCP port another process holds", argv: ["serve", "--image", p("s1.img"), "--name", "s1", "--run-dir", p("run"), "--nbd", `tcp:127.0.0.1:${port}`], code: ExitCode.badInput, names: `127.0.0.1:${port}`, says: "address in use: another process listens there (EADDRINUSE)" },
    { what: "serve: --nbd on an address that is not this host's", argv: ["serve", "--image", p("s2.img"), "--name", "s2", "--run-dir", p("run"), "--nbd", "tcp:192.0.2.1:7007"], code: ExitCode.badInput, names: "192.0.2.1:7007", says: "EADDRNOTAVAIL" },
    { what: "serve: --nbd on a host name that resolves to nothing here", argv: ["serve", "--image", p("s3.img"), "--name", "s3", "--run-dir", p("run"), "--nbd", "tcp:nohost.invalid:7007"], code: ExitCode.badInput, names: "nohost.invalid:7007" },
    { what: "serve: --nbd port out of range", argv: ["serve", "--image", p("s4.img"), "--name", "s4", "--run-dir", p("run"), "--nbd", "tcp:127.0.0.1:99999"], code: ExitCode.usage, names: "tcp:127.0.0.1:99999" },
    { what: "serve: --nbd unix socket in a missing directory", argv: ["serve", "--image", p("s5.img"), "--name", "s5", "--run-dir", p("run"), "--nbd", `unix:${p("nodir", "s5.nbd")}`], code: ExitCode.badInput, names: p("nodir", "s5.nbd"), says: "does not exist" },
    {
      what: "serve: --nbd unix:PATH where PATH is a file (an image, say): refused, the file left alone",
      argv: ["serve", "--image", p("s6.img"), "--name", "s6", "--run-dir", p("run"), "--nbd", `unix:${p("precious.img")}`],
      code: ExitCode.badInput,
      names: p("precious.img"),
      says: "is not a socket",
      check: () => expect(existsSync(p("precious.img"))).toBe(true),
    },
    { what: "serve: an image another serve holds", argv: ["serve", "--image", p("a.img"), "--name", "other", "--run-dir", p("run")], code: ExitCode.badInput, names: p("a.img"), says: "in use by another process" },
    { what: "serve: an image that is a directory", argv: ["serve", "--image", p("adir"), "--name", "s7", "--run-dir", p("run")], code: ExitCode.badInput, names: p("adir"), says: "EISDIR" },
    { what: "serve: a run directory under a file", argv: ["serve", "--image", p("s8.img"), "--name", "s8", "--run-dir", p("a-file", "run")], code: ExitCode.badInput, names: p("a-file", "run"), says: "ENOTDIR" },
    {
      what: "serve: a run directory this user may not write in",
      when: canRunAsNobody,
      prefix: ["runuser", "-u", "nobody", "--"],
      argv: ["serve", "--image", p("open", "n1.img"), "--name", "n1", "--run-dir", p("rootonly")],
      code: ExitCode.badInput,
      names: p("rootonly", "n1.ctl"),
      says: "EACCES",
    },
    {
      what: "serve: a privileged port, not as root",
      when: canRunAsNobody,
      prefix: ["runuser", "-u", "nobody", "--"],
      argv: ["serve", "--image", p("open", "n2.img"), "--name", "n2", "--run-dir", p("open"), "--nbd", "tcp:127.0.0.1:80"],
      code: ExitCode.badInput,
      names: "127.0.0.1:80",
      says: "privileged",
    },

    // dest: every check before it listens
    { what: "dest: --listen on a port another process holds (a dest that finished keeps it 60 s)", argv: destArgs("--listen", `127.0.0.1:${port}`, "--insecure"), code: ExitCode.badInput, names: `127.0.0.1:${port}`, says: /EADDRINUSE[\s\S]*hint: .*60 s/ },
    { what: "dest: --listen on an address that is not this host's", argv: destArgs("--listen", "192.0.2.1:7007", "--insecure"), code: ExitCode.badInput, names: "192.0.2.1:7007", says: "is not an address of this host (EADDRNOTAVAIL)" },
    { what: "dest: --listen on a host name that resolves to nothing here", argv: destArgs("--listen", "nohost.invalid:7007", "--insecure"), code: ExitCode.badInput, names: "nohost.invalid:7007" },
    { what: "dest: --listen without a port", argv: destArgs("--listen", "127.0.0.1", "--insecure"), code: ExitCode.usage, names: "--listen", hint: false },
    {
      what: "dest: a privileged port, not as root",
      when: canRunAsNobody,
      prefix: ["runuser", "-u", "nobody", "--"],
      argv: ["dest", "--name", "d1", "--image", p("open", "d1.img"), "--run-dir", p("open"), "--listen", "127.0.0.1:80", "--insecure"],
      code: ExitCode.badInput,
      names: "127.0.0.1:80",
      says: "EACCES",
    },
    { what: "dest: --image in a directory that does not exist: found before listening", argv: ["dest", "--name", "in", "--image", p("nodir", "in.img"), "--run-dir", p("destrun"), "--listen", "127.0.0.1:0", "--insecure"], code: ExitCode.badInput, names: p("nodir"), says: "does not exist", check: notListening },
    { what: "dest: --image that is a directory", argv: ["dest", "--name", "in", "--image", p("adir"), "--run-dir", p("destrun"), "--listen", "127.0.0.1:0", "--insecure"], code: ExitCode.badInput, names: p("adir"), says: "is a directory", check: notListening },
    {
      what: "dest: --image in a directory this user may not write in",
      when: canRunAsNobody,
      prefix: ["runuser", "-u", "nobody", "--"],
      argv: ["dest", "--name", "d2", "--image", p("rootonly", "d2.img"), "--run-dir", p("open"), "--listen", "127.0.0.1:0", "--insecure"],
      code: ExitCode.badInput,
      names: p("rootonly"),
      says: "may not write",
      check: notListening,
    },
    { what: "dest: a run directory under a file", argv: ["dest", "--name", "in", "--image", p("in.img"), "--run-dir", p("a-file", "run"), "--listen", "127.0.0.1:0", "--insecure"], code: ExitCode.badInput, names: p("a-file", "run"), says: "ENOTDIR" },
    { what: "dest: a name served here already", argv: ["dest", "--name", "vm", "--image", p("in.img"), "--run-dir", p("run"), "--listen", "127.0.0.1:0", "--insecure"], code: ExitCode.badInput, names: "vm", says: "already served", check: notListening },
    { what: "dest: --pid-file in a directory that does not exist", argv: destArgs("--listen", "127.0.0.1:0", "--insecure", "--pid-file", p("nodir", "in.pid")), code: ExitCode.badInput, names: p("nodir", "in.pid"), says: "ENOENT", check: notListening },
    { what: "dest: --resume-timeout that is not a number", argv: destArgs("--listen", "127.0.0.1:0", "--insecure", "--resume-timeout", "soon"), code: ExitCode.usage, names: "--resume-timeout" },
    { what: "dest: no secret and no --insecure", argv: destArgs("--listen", "127.0.0.1:0"), code: ExitCode.usage, names: "--secret-file", hint: false },
    { what: "dest: a secret file that is not there", argv: destArgs("--listen", "127.0.0.1:0", "--secret-file", p("nope.secret")), code: ExitCode.badInput, names: p("nope.secret"), says: "no such file (ENOENT)" },
    { what: "dest: a secret file others may read", argv: destArgs("--listen", "127.0.0.1:0", "--secret-file", p("open.secret")), code: ExitCode.badInput, names: p("open.secret"), says: "readable by others" },
    { what: "dest: a secret too short", argv: destArgs("--listen", "127.0.0.1:0", "--secret-file", p("short.secret")), code: ExitCode.badInput, names: p("short.secret"), says: "too short" },
    { what: "dest: a secret file that is a directory", argv: destArgs("--listen", "127.0.0.1:0", "--secret-file", p("adir")), code: ExitCode.badInput, names: p("adir"), says: "not a file" },
    {
      what: "dest: a secret file this user may not read",
      when: canRunAsNobody,
      prefix: ["runuser", "-u", "nobody", "--"],
      argv: ["dest", "--name", "d3", "--image", p("open", "d3.img"), "--run-dir", p("open"), "--listen", "127.0.0.1:0", "--secret-file", p("good.secret")],
      code: ExitCode.badInput,
      names: p("good.secret"),
      says: "EACCES",
    },
    { what: "dest: a --tls-cert that is not there", argv: destArgs("--listen", "127.0.0.1:0", ...tls(pem("nope.pem"), pem("host.key"), pem("ca.pem"))), code: ExitCode.badInput, names: pem("nope.pem"), says: "ENOENT" },
    { what: "dest: a --tls-cert that is not a certificate", argv: destArgs("--listen", "127.0.0.1:0", ...tls(p("good.secret"), pem("host.key"), pem("ca.pem"))), code: ExitCode.badInput, names: p("good.secret"), says: "not a PEM certificate" },
    { what: "dest: a --tls-key that is not the certificate's", argv: destArgs("--listen", "127.0.0.1:0", ...tls(pem("host.pem"), pem("other.key"), pem("ca.pem"))), code: ExitCode.badInput, names: pem("other.key"), says: "not the key of" },

    // source
    {
      what: "source: nothing listens at --to (after its reconnects)",
      argv: sourceArgs("vm", "--to", "127.0.0.1:1", "--insecure"),
      code: ExitCode.abortedSafely,
      names: "127.0.0.1:1",
      says: "nothing listens on 127.0.0.1:1 (ECONNREFUSED)",
      logsFirst: true,
    },
    { what: "source: --to a host that does not resolve", argv: sourceArgs("vm2", "--to", "nohost.invalid:7007", "--insecure"), code: ExitCode.abortedSafely, names: "nohost.invalid:7007", says: "does not resolve", logsFirst: true },
    { what: "source: --to without a port", argv: sourceArgs("vm", "--to", "hostb", "--insecure"), code: ExitCode.usage, names: "--to", hint: false },
    { what: "source: no serve of that name", argv: sourceArgs("nobody-serves-this", "--to", "127.0.0.1:1", "--insecure"), code: ExitCode.abortedSafely, names: "nobody-serves-this", says: `${p("run", "nobody-serves-this.ctl")}: no such socket (ENOENT)` },
    { what: "source: --bandwidth that does not parse", argv: sourceArgs("vm", "--to", "127.0.0.1:1", "--insecure", "--bandwidth", "fast"), code: ExitCode.usage, names: '--bandwidth "fast"' },
    { what: "source: --max-downtime that does not parse", argv: sourceArgs("vm", "--to", "127.0.0.1:1", "--insecure", "--max-downtime", "soon"), code: ExitCode.usage, names: '--max-downtime "soon"' },
    { what: "source: --streams out of range", argv: sourceArgs("vm", "--to", "127.0.0.1:1", "--insecure", "--streams", "0"), code: ExitCode.usage, names: '--streams "0"' },
    { what: "source: --timeout that does not parse", argv: sourceArgs("vm", "--to", "127.0.0.1:1", "--insecure", "--timeout", "1 hour"), code: ExitCode.usage, names: '--timeout "1 hour"' },
    { what: "source: --max-log-size that does not parse", argv: sourceArgs("vm", "--to", "127.0.0.1:1", "--insecure", "--max-log-size", "huge"), code: ExitCode.usage, names: "--max-log-size huge" },
    { what: "source: --throttle-delay that does not parse", argv: sourceArgs("vm", "--to", "127.0.0.1:1", "--insecure", "--throttle-delay", "a bit"), code: ExitCode.usage, names: '--throttle-delay "a bit"' },
    { what: "source: --report into a directory that does not exist: found before the migration, not after", argv: sourceArgs("vm", "--to", "127.0.0.1:1", "--insecure", "--report", p("nodir", "r.svg")), code: ExitCode.badInput, names: p("nodir"), says: "does not exist" },
    { what: "source: a secret file that is not there", argv: sourceArgs("vm", "--to", "127.0.0.1:1", "--secret-file", p("nope.secret")), code: ExitCode.badInput, names: p("nope.secret") },
    { what: "source: a --tls-ca that is not a certificate", argv: sourceArgs("vm", "--to", "127.0.0.1:1", ...tls(pem("host.pem"), pem("host.key"), pem("host.key"))), code: ExitCode.badInput, names: `--tls-ca ${pem("host.key")}` },

    // status, workload: a name nobody serves, a serve that died
    { what: "status: a name nobody serves", argv: ["status", "--name", "nope", "--run-dir", p("run")], code: ExitCode.peerFailure, names: p("run", "nope.ctl"), says: "no such socket (ENOENT)" },
    { what: "status: a serve that was killed (its socket left behind)", argv: ["status", "--name", "stale", "--run-dir", p("run")], code: ExitCode.peerFailure, names: p("run", "stale.ctl"), says: "stale socket nobody listens on (ECONNREFUSED)" },
    { what: "status: a run directory that does not exist", argv: ["status", "--name", "vm", "--run-dir", p("nodir")], code: ExitCode.peerFailure, names: p("nodir", "vm.ctl"), says: "no such directory" },
    { what: "workload: a name nobody serves", argv: ["workload", "--name", "nope", "--run-dir", p("run"), "--pattern", "random-4k", "--duration", "1s"], code: ExitCode.peerFailure, names: p("run", "nope.nbd"), says: "no such socket (ENOENT)" },
    { what: "workload: --duration that does not parse", argv: ["workload", "--name", "vm", "--run-dir", p("run"), "--pattern", "random-4k", "--duration", "soon"], code: ExitCode.usage, names: '--duration "soon"' },

    // migrate, redirect
    { what: "migrate: no serve of that name", argv: ["migrate", "nobody-serves-this", "--run-dir", p("run"), "--to", "ssh://127.0.0.1:1"], code: ExitCode.abortedSafely, names: "nobody-serves-this", says: "no such socket" },
    { what: "migrate: --to that is not ssh://", argv: ["migrate", "vm", "--run-dir", p("run"), "--to", "hostb:7007"], code: ExitCode.usage, names: "SSH" },
    { what: "migrate: an ssh port where nothing listens (pre-flight)", when: !!Bun.which("ssh"), argv: ["migrate", "vm", "--run-dir", p("run"), "--to", "ssh://127.0.0.1:1", "--dry-run"], code: ExitCode.peerFailure, names: "pre-flight", says: /FAIL\s+ssh\s+cannot reach 127\.0\.0\.1:1/, hint: false, logsFirst: true },
    { what: "redirect: an unknown action", argv: ["redirect", "frob", "--name", "vm", "--run-dir", p("run")], code: ExitCode.usage, names: "frob" },
  ];
}

const ROWS = rows();

beforeAll(async () => {
  mkdirSync(p("run"));
  mkdirSync(p("adir"));
  mkdirSync(p("tls"));
  writeFileSync(p("a-file"), "not a directory\n");
  writeFileSync(p("precious.img"), "data an operator wants to keep\n");
  // One image per serve row: a serve locks its image before it listens, and the rows run side by side.
  await Promise.all(["a", "b", "stale", "s1", "s2", "s3", "s4", "s5", "s6", "s8"].map((n) => sparseFile(p(`${n}.img`), 1 << 20)));
  await secretFile(p("good.secret"));
  await secretFile(p("short.secret"), "short");
  writeFileSync(p("open.secret"), "a-test-secret-of-enough-length", { mode: 0o644 });
  // A CA, a host certificate it signed, and a key of nothing.
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await sh(["openssl", "req", "-x509", ...ec, "-days", "2", "-subj", "/CN=ca", "-keyout", p("tls", "ca.key"), "-out", p("tls", "ca.pem")]);
  await sh(["openssl", "req", ...ec, "-subj", "/CN=host", "-keyout", p("tls", "host.key"), "-out", p("tls", "host.csr")]);
  await sh(["openssl", "x509", "-req", "-in", p("tls", "host.csr"), "-CA", p("tls", "ca.pem"), "-CAkey", p("tls", "ca.key"), "-CAcreateserial", "-days", "2", "-out", p("tls", "host.pem")]);
  await sh(["openssl", "genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p("tls", "other.key")]);
  if (canRunAsNobody) {
    // For rows run as nobody: a directory it may write in, one it may not.
    mkdirSync(p("open"), { mode: 0o777 });
    mkdirSync(p("rootonly"), { mode: 0o755 });
    await sh(["chmod", "777", p("open")]);
    await sh(["chmod", "755", dir.path]);
    for (const n of ["n1", "n2"]) {
      await sparseFile(p("open", `${n}.img`), 1 << 20);
      await sh(["chmod", "666", p("open", `${n}.img`)]);
    }
  }
  serves.push(await startServe({ image: p("a.img"), runDir: p("run"), name: "vm" }));
  serves.push(await startServe({ image: p("b.img"), runDir: p("run"), name: "vm2" }));
  // A serve killed with SIGKILL leaves its control socket behind, nobody listening.
  const stale = await startServe({ image: p("stale.img"), runDir: p("run"), name: "stale" });
  stale.proc.kill("SIGKILL");
  await stale.proc.exited;
  // Every row runs now, a few at a time: the slowest (a source's reconnects, 16 s) first.
  const all = ROWS.filter((r) => r.when !== false);
  const queue = [...all].sort((a, b) => Number(!!b.logsFirst) - Number(!!a.logsFirst));
  const started = new Map<string, () => void>();
  for (const row of all) results.set(row.what, new Promise<Result>((resolve) => started.set(row.what, () => run(row).then(resolve))));
  const worker = async () => {
    for (let row = queue.shift(); row; row = queue.shift()) {
      started.get(row.what)!();
      await results.get(row.what);
    }
  };
  void Promise.all([worker(), worker(), worker(), worker()]);
}, 60_000);

afterAll(async () => {
  // Rows still running (a failed beforeAll) would find their directory gone: let them end.
  await Promise.all(results.values());
  busy.stop(true);
  for (const s of serves) await s.stop();
  dir.remove();
});

/** Bun's uncaught-error output or a stack frame: what an operator must never see. */
const STACK = /^\s+at .+[:(]/m;
const UNCAUGHT = /^(error|Error|TypeError|RangeError): /m;

describe("operator mistakes: one line that names the thing, a hint, the documented exit code", () => {
  for (const row of ROWS) {
    test.skipIf(row.when === false)(row.what, async () => {
      const r = await results.get(row.what)!;
      const context = `${row.argv.join(" ")}\n--- stderr:\n${r.stderr}`;
      expect(r.code, context).not.toBe(ExitCode.internal);
      expect(r.code, context).toBe(row.code);
      expect(r.stderr, context).not.toMatch(STACK);
      expect(r.stderr, context).not.toMatch(UNCAUGHT);
      // Bun's words where ours belong.
      expect(r.stderr, context).not.toMatch(/Was there a typo|Failed to listen|Failed to connect/);
      const lines = r.stderr.split("\n").filter((l) => l.trim());
      const at = lines.findIndex((l) => l.startsWith("wanmig: "));
      expect(at, context).toBeGreaterThanOrEqual(0);
      if (!row.logsFirst) expect(at, context).toBe(0);
      const first = lines[at]!;
      if (typeof row.names === "string") expect(first, context).toContain(row.names);
      else expect(first, context).toMatch(row.names);
      if (typeof row.says === "string") expect(r.stderr, context).toContain(row.says);
      else if (row.says) expect(r.stderr, context).toMatch(row.says);
      if (row.hint !== false) expect(r.stderr, context).toMatch(/^ {2}hint: \S/m);
      row.check?.(r);
    }, 60_000);
  }
});

describe("a destination's disk too small for the image", () => {
  test("source and dest each end in a line that says so, exit 5, the VM's disk writable at the source", async () => {
    // A 2 MiB tmpfs for an 8 MiB image of random data; needs root (mount).
    const small = p("small");
    mkdirSync(small);
    if ((await sh(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", small], { allowFail: true })).code !== 0) {
      console.warn("cannot mount a tmpfs here: the full-disk row is skipped");
      return;
    }
    let srv: ServeHandle | undefined;
    let dst: Awaited<ReturnType<typeof startDest>> | undefined;
    try {
      await randomFile(p("full.img"), 8 << 20);
      srv = await startServe({ image: p("full.img"), runDir: p("run"), name: "full" });
      dst = await startDest({ image: join(small, "in.img"), runDir: p("destsmall"), name: "full", args: ["--insecure"] });
      const r = await wanmig(["source", "--name", "full", "--run-dir", p("run"), "--to", `127.0.0.1:${dst.port}`, "--insecure"]);
      expect(r.code, r.stderr).toBe(ExitCode.abortedSafely);
      expect(r.stderr).not.toMatch(STACK);
      expect(r.stderr.split("\n").find((l) => l.startsWith("wanmig: "))).toContain("no space left on device");
      expect(r.stderr).toMatch(/^ {2}hint: \S/m);
      expect((await srv.ctl.status()).mode).toBe("normal");
      const destCode = await Promise.race([dst.proc.exited, Bun.sleep(10_000).then(() => -1)]);
      expect(destCode, dst.stderr()).toBe(ExitCode.abortedSafely);
      expect(dst.stderr()).not.toMatch(STACK);
      expect(dst.stderr()).toContain("ENOSPC");
    } finally {
      if (dst && dst.proc.exitCode === null) await dst.stop();
      await srv?.stop();
      await sh(["umount", small], { allowFail: true });
    }
  }, 60_000);
});

describe("a second source for a disk that is migrating", () => {
  test("is refused at once, exit 3, naming the source that migrates it; the first goes on", async () => {
    await sparseFile(p("busy.img"), 1 << 20);
    const srv = await startServe({ image: p("busy.img"), runDir: p("run"), name: "busy" });
    // The first source waits for a destination that is not there (its reconnects: 16 s).
    const first = Bun.spawn([process.execPath, MAIN, "source", "--name", "busy", "--run-dir", p("run"), "--to", "127.0.0.1:1", "--insecure"], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    try {
      await watchStderr(first, "the first source").waitFor("recording into", 10_000);
      const r = await wanmig(["source", "--name", "busy", "--run-dir", p("run"), "--to", "127.0.0.1:1", "--insecure"]);
      expect(r.code, r.stderr).toBe(ExitCode.badInput);
      expect(r.stderr).not.toMatch(STACK);
      expect(r.stderr.split("\n").find((l) => l.startsWith("wanmig: "))).toContain(`a migration of busy is already under way (source pid ${first.pid})`);
      expect(r.stderr).toMatch(/^ {2}hint: \S/m);
      expect((await srv.ctl.status()).recording.active).toBe(true);
    } finally {
      first.kill("SIGTERM");
      await first.exited;
      await srv.stop();
    }
  }, 60_000);
});
