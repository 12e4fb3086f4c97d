import { defineCommand } from "citty";
import { DiskService } from "../disk/disk-service.ts";
import { retireMovedServer } from "../disk/retire-moved.ts";
import { existsSync, mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileProblem } from "../util/os-errors.ts";
import { runCommand } from "../util/run.ts";
import { destHypervisor } from "../hypervisor/index.ts";
import { recoverStaleJournal } from "../redirect/journal.ts";
import { announceGateway } from "../redirect/announce.ts";
import { Redirect } from "../redirect/redirect.ts";
import { logger, redirectLogsTo, setLogLevel } from "../log.ts";
import type { Channel } from "../net/channel.ts";
import type { Hello } from "../net/protocol.ts";
import { listenTcp, pipeChannel, stdoutSink } from "../net/channel.ts";
import { describeError, ServeError, UsageError } from "../errors.ts";
import { Receiver } from "../phases/receive.ts";
import { ImageStateFile, stateFilePath } from "../disk/image-state.ts";
import { ReceiveError } from "../phases/errors.ts";
import { jsonArg, logArg, nameArg, REPEATABLE, runDirArg, valuesOf } from "./_shared.ts";
import { credentials, parseHostPort, writableDir } from "./_migration.ts";
import { serverTls, tlsArgs, type TlsFiles, tlsFromArgs } from "../net/tls.ts";

/**
 * Connections from the source, one after another (a broken one may be followed by a resume),
 * each handed over once its handshake authenticated it. Handshakes run as connections
 * arrive, side by side: a stranger that connects and says nothing, or says HELLO and never
 * proves itself, must not hold the real source up behind it until a timeout.
 */
function connections(listen: string, name: string, log: ReturnType<typeof logger>, receiver: Receiver, tls?: TlsFiles) {
  const { host, port } = parseHostPort(listen, "--listen");
  const waiting: Authenticated[] = [];
  let wake: (() => void) | undefined;
  const refused = (why: string) => log.warn(`refused a source at the TLS handshake (${why}); waiting for one whose certificate chains to --tls-ca`);
  const listener = listenTcp(
    host,
    port,
    (ch) =>
      void receiver.authenticate(ch).then((hello) => {
        if (!hello) return;
        waiting.push({ ch, hello });
        wake?.();
      }),
    tls && { options: serverTls(tls), onRefused: refused },
    { busyHint: `stop that process (\`ss -ltnp 'sport = :${port}'\` names it), or pick another --listen port; a TCP dest keeps its port for 60 s after a move, for a source that lost its answer` },
  );
  log.info(`listening on ${host}:${listener.port} for ${name}`);
  return {
    async next(timeoutMs: number): Promise<Authenticated | undefined> {
      const end = Date.now() + timeoutMs;
      while (!waiting.length && Date.now() < end) await new Promise<void>((r) => ((wake = r), setTimeout(r, Math.min(end - Date.now(), 60_000))));
      return waiting.shift();
    },
    close: () => listener.stop(false),
  };
}

/**
 * What can be checked before anything is created or listens: a value found wrong only when
 * the source connects (or after a broken link) is found too late. Each image is a file, or
 * is created in a directory that exists; its state file goes beside it either way.
 */
function checkStartup(args: { stdio: boolean; listen?: string; "resume-timeout": string }, images: string[]): void {
  if (!args.stdio) parseHostPort(args.listen!, "--listen");
  if (!/^\d+(\.\d+)?$/.test(args["resume-timeout"].trim()))
    throw new UsageError(`--resume-timeout ${JSON.stringify(args["resume-timeout"])} is not a number of seconds`, "write it like 600");
  for (const image of images) {
    try {
      if (statSync(image).isDirectory()) throw new ServeError(`--image ${image} is a directory`, { hint: "name the image file (it is created if missing)" });
    } catch (cause) {
      if (cause instanceof ServeError) throw cause;
      if ((cause as NodeJS.ErrnoException).code !== "ENOENT") throw new ServeError(`cannot use --image ${image}: ${fileProblem(cause)}`);
    }
    writableDir(dirname(resolve(image)), `--image ${image}`);
  }
}

/** Each image starts as a sparse (or reflinked) copy of its base; an existing image is a base already. */
async function copyBases(bases: string[], images: string[], log: ReturnType<typeof logger>): Promise<void> {
  if (bases.length !== images.length) throw new UsageError(`${bases.length} --base for ${images.length} --image`, "give --base once per --image, in the same order, or not at all");
  for (const image of images) if (existsSync(image)) throw new UsageError(`--image ${image} exists already`, "an existing image is itself used as the base: drop --base, or point --image at a new file");
  for (const base of bases) if (!existsSync(base)) throw new UsageError(`--base ${base} does not exist`);
  for (const [i, base] of bases.entries()) {
    const r = await runCommand(["cp", "--sparse=always", "--reflink=auto", base, images[i]!], log);
    log.info(`image ${images[i]} starts as a copy of ${base} (${r.durationMs} ms)`);
  }
}

/** The interface this host routes an address through (where the VM sits, by its new address). */
async function routeDevice(ip: string, log: ReturnType<typeof logger>): Promise<string | undefined> {
  const out = (await runCommand(["ip", "-j", "route", "get", ip], log)).stdout;
  return (JSON.parse(out) as { dev?: string }[])[0]?.dev;
}

type Connections = ReturnType<typeof connections>;
interface Authenticated {
  ch: Channel;
  hello: Hello;
}

/**
 * Runs connections from the source until the migration completes (TCP: resumes included).
 * Returns the listener still open (TCP), so a source that lost DONE can ask a while longer.
 */
async function receive(
  args: { stdio: boolean; listen?: string; name: string; "resume-timeout": string; tls?: boolean; "tls-cert"?: string; "tls-key"?: string; "tls-ca"?: string },
  receiver: Receiver,
  log: ReturnType<typeof logger>,
): Promise<Connections | undefined> {
  if (args.stdio) {
    const outcome = await receiver.serve(pipeChannel(Bun.stdin.stream(), stdoutSink()));
    if (outcome === "dropped") throw new ReceiveError("the ssh link broke; run the migration again");
    if (outcome === "rejected") throw new ReceiveError("the source's handshake failed (see above)");
    return undefined;
  }
  const conns = connections(args.listen!, args.name, log, receiver, tlsFromArgs(args));
  try {
    for (let started = false; ; ) {
      // Wait for the first source as long as it takes; for a resume, a bounded time.
      const next = await conns.next(started ? Number(args["resume-timeout"]) * 1000 : Number.MAX_SAFE_INTEGER);
      if (!next) throw new ReceiveError(`the source did not come back within ${args["resume-timeout"]} s`);
      const outcome = await receiver.serve(next.ch, next.hello);
      if (outcome === "completed") return conns;
      if (outcome === "dropped") started = true;
    }
  } catch (err) {
    conns.close();
    throw err;
  }
}

/**
 * After completion: answer a source that lost DONE (it asks with the same recording) until
 * `ms` pass, or (`once`) until one has been answered.
 */
async function answerLateQueries(conns: Connections, receiver: Receiver, ms: number, once = false): Promise<void> {
  const end = Date.now() + ms;
  try {
    for (;;) {
      const left = end - Date.now();
      if (left <= 0) return;
      const next = await conns.next(left);
      if (next && (await receiver.serve(next.ch, next.hello).catch(() => "rejected")) === "answered" && once) return;
    }
  } finally {
    conns.close();
  }
}

/**
 * How long a TCP dest keeps its port after completing, for a source that lost DONE: long
 * enough for the source's own reconnects, short enough that a runbook moving the next VM
 * to the same port does not trip on it. Later, `wanmig dest` run again answers instead.
 */
const LATE_ANSWER_MS = 60_000;

/** A retired server (its disk moved away, the VM comes back): the same clean stop as an operator's SIGTERM. */
const stopThisProcess = () => process.kill(process.pid, "SIGTERM");

export default defineCommand({
  meta: { name: "dest", description: "Receive a migrating VM's disk, then serve it here (holding its I/O until consistent)" },
  args: {
    ...nameArg,
    image: { type: "string", description: "an image file here (created sparse if missing); once per disk, in the source's order", required: true, valueHint: "PATH", ...REPEATABLE },
    ...runDirArg,
    base: { type: "string", description: "start --image as a copy of this file (a template, an older copy of the disk): only blocks that differ travel; once per --image", valueHint: "PATH", ...REPEATABLE },
    listen: { type: "string", description: "where the source connects", valueHint: "HOST:PORT" },
    "resume-timeout": { type: "string", description: "after a broken link, how long to wait for the source to resume (seconds)", default: "600", valueHint: "S" },
    hypervisor: { type: "enum", options: ["none", "xl", "qemu", "libvirt"], description: "who runs the VM here once its disk is verified: none, xl (unpause DOMAIN), qemu (wait until it runs), libvirt (virsh resume DOMAIN)", default: "none" },
    domain: { type: "string", description: "with xl or libvirt: the domain to run here", valueHint: "DOMAIN" },
    "libvirt-uri": { type: "string", description: "with libvirt: this host's libvirt (virsh -c; default: virsh's own)", valueHint: "URI" },
    qmp: { type: "string", description: "with qemu: the destination QEMU's QMP socket", valueHint: "unix:PATH" },
    "pid-file": { type: "string", description: "write our pid here (removed on exit): the daemon `wanmig migrate` leaves behind", valueHint: "FILE" },
    "remove-on-abort": { type: "boolean", description: "if the migration aborts, remove the image this run created (what `wanmig migrate` asks)", default: false },
    "vm-dev": { type: "string", description: "with a network redirect: the interface behind which the VM sits on this host (default: the route to its new address)", valueHint: "DEV" },
    stdio: { type: "boolean", description: "speak the protocol on stdin/stdout (run by `ssh HOST wanmig dest --stdio`; SSH authenticates)", default: false },
    "secret-file": { type: "string", description: "shared secret (both sides prove they know it; it is never sent)", valueHint: "F" },
    ...tlsArgs,
    insecure: { type: "boolean", description: "no secret: frames in the clear (the only way to a plaintext stream), and any source that reaches the port is accepted", default: false },
    ...jsonArg,
    ...logArg,
  },
  async run({ args, rawArgs }) {
    if (args.log) setLogLevel(args.log);
    const log = logger("migration target");
    const images = valuesOf(rawArgs, "image");
    const bases = valuesOf(rawArgs, "base");
    if (new Set(images).size !== images.length) throw new UsageError("an --image is given twice", "--image once per disk, each a different file");
    const serveLog = logger("serve");
    if (!args.stdio && !args.listen) throw new UsageError("dest needs --listen HOST:PORT or --stdio");
    // Over SSH the transport authenticated both ends already; no secret is needed.
    if (args.stdio && args.tls) throw new UsageError("--tls is for --listen over TCP; with --stdio, ssh encrypts and authenticates already");
    tlsFromArgs(args); // its files checked now, before anything starts
    checkStartup(args, images);
    const creds = args.stdio ? { secret: args["secret-file"] ? credentials(args, "dest").secret : undefined } : credentials(args, "dest");
    const hv = destHypervisor(args, log);
    // The run directory is ours to make, as serve's is (`wanmig migrate --remote-run-dir`
    // names one that may not exist yet): the pid file and the sockets go there.
    try {
      mkdirSync(args["run-dir"], { recursive: true, mode: 0o755 });
    } catch (cause) {
      throw new ServeError(`cannot create the run directory ${args["run-dir"]}: ${fileProblem(cause)}`, { hint: "pick another --run-dir, or create it" });
    }
    // NAME served here already: found now, not once the whole image has crossed and this
    // dest starts serving it. A server left holding these very images, fenced since the VM
    // moved away, is stopped: the VM comes back onto them. (A copy verified here before a
    // restart may be served by the dest that received it: that case is handled below.)
    let incoming = ImageStateFile.read(images).incoming;
    if (incoming?.state !== "verified" && (await retireMovedServer(args["run-dir"], args.name, images, log)) === "retired") incoming = ImageStateFile.read(images).incoming;
    const createdImages = images.filter((p) => !existsSync(p));
    // A killed destination of these images left its position here: take it up, copy no base over it.
    const resuming = incoming?.state === "receiving" && images.every((p) => existsSync(p));
    if (bases.length && !resuming) await copyBases(bases, images, log);
    const state = new ImageStateFile(images);
    await recoverStaleJournal(args["run-dir"], args.name, log);
    let svc: DiskService | undefined;
    let redirect: Redirect | undefined;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const receiver = new Receiver({
      images,
      creds,
      log,
      state,
      onAuthenticated: async () => {
        // A VM whose QEMU is waiting here reads its disk at start-up: let reads through (nbd-server.ts).
        svc = await DiskService.start({ images, name: args.name, runDir: args["run-dir"], hold: held, holdWritesOnly: hv.readsBeforeRelease, log: serveLog, state, onRetire: stopThisProcess });
        svc.incoming = () => receiver.progress();
      },
      // The image is the VM's disk here from now on: a fence an earlier migration away from
      // this host left on it (this is the way back) is lifted, durably, before DONE goes out.
      onVerified: () => {
        if (svc?.fencing.fenced || state.state.fence) svc?.unfence("the incoming migration is verified: the VM's disk lives here again", { force: true });
      },
      onRedirect: async (m) => {
        const vmDev = args["vm-dev"] ?? (m.newIp ? await routeDevice(m.newIp, log) : undefined);
        if (!vmDev) throw new UsageError("the network redirect needs the VM's interface here", "pass --vm-dev DEV to dest, or --new-ip to source");
        const spec = { mode: m.mode, iface: m.iface, local: m.destAddr, remote: m.sourceAddr, oldIp: m.oldIp, vni: m.vni, table: m.table };
        redirect = await Redirect.dest(spec, vmDev, { runDir: args["run-dir"], name: args.name }, log);
        redirectIdleMs = m.idleMs;
        vmLink = { dev: vmDev, ip: m.oldIp };
        log.info(`redirect: ${m.mode} tunnel ${m.iface} from ${m.sourceAddr} up; ${m.oldIp} is delivered to ${vmDev}, its replies go back through the tunnel`);
      },
    });
    // After that check: the pid file of a dest that serves NAME here is not ours to replace.
    if (args["pid-file"]) {
      try {
        writeFileSync(args["pid-file"], `${process.pid}\n`);
      } catch (cause) {
        throw new ServeError(`cannot write --pid-file ${args["pid-file"]}: ${fileProblem(cause)}`, { hint: "pick a path in a directory that exists and that you may write in" });
      }
      const pidFile = args["pid-file"];
      process.on("exit", () => rmSync(pidFile, { force: true }));
    }
    let redirectIdleMs = 0;
    let vmLink: { dev: string; ip: string } | undefined;
    // Whatever ends the migration early, this host's redirect end must not outlive it.
    const undoRedirect = () => redirect?.teardown().catch((err) => log.error(describeError(err)));
    let conns: Connections | undefined;
    if (receiver.verifiedRecording) {
      // Verified before a restart: serve it; a source that lost DONE may still ask.
      log.info(`the incoming migration ${receiver.verifiedRecording} was verified here before a restart; serving ${images.join(" + ")}`);
      try {
        svc = await DiskService.start({ images, name: args.name, runDir: args["run-dir"], log: serveLog, state, onRetire: stopThisProcess });
      } catch (err) {
        // A recovering source asks us while another process (the dest daemon of that
        // migration) serves the image: answer it, and leave that process be.
        if (!(err instanceof ServeError) || !/in use/.test(err.message)) throw err;
        log.info("another process serves the image; answering the source's question only");
        if (args.stdio) await receiver.serve(pipeChannel(Bun.stdin.stream(), stdoutSink()));
        else await answerLateQueries(connections(args.listen!, args.name, log, receiver, tlsFromArgs(args)), receiver, Number(args["resume-timeout"]) * 1000, true);
        return;
      }
      if (args.stdio) await receiver.serve(pipeChannel(Bun.stdin.stream(), stdoutSink()));
      else conns = connections(args.listen!, args.name, log, receiver, tlsFromArgs(args));
    } else {
      try {
        conns = await receive(args, receiver, log);
      } catch (err) {
        await undoRedirect();
        svc?.stop();
        if (args["remove-on-abort"] && createdImages.length) {
          for (const image of createdImages) {
            rmSync(image, { force: true });
            rmSync(stateFilePath(image), { force: true });
          }
          log.warn(`migration aborted: removed ${createdImages.join(", ")}, which this run had created`);
        }
        throw err;
      }
    }
    if (conns) void answerLateQueries(conns, receiver, Math.min(LATE_ANSWER_MS, Number(args["resume-timeout"]) * 1000));
    release();
    if (redirect) {
      const r = redirect;
      r.teardownWhenIdle(redirectIdleMs).then(
        ({ lastPacketAt }) => {
          log.info(`redirect: no packet through ${r.spec.iface} for ${redirectIdleMs} ms; torn down`);
          if (args.json && !args.stdio) process.stdout.write(`${JSON.stringify({ event: "redirect-teardown", lastPacketAt, at: Date.now() })}\n`);
        },
        (err) => log.error(describeError(err)),
      );
    }
    // The disk is verified and served from here on, whatever the hypervisor says next: a
    // VM that fails to start here is an operator's call, not a reason to drop its disk.
    await hv.release().then(
      ({ runningAt }) => {
        if (hv.kind === "none") return;
        log.info(`the VM runs here (${hv.kind}) since ${new Date(runningAt).toISOString()}`);
        if (args.json && !args.stdio) process.stdout.write(`${JSON.stringify({ event: "running", hypervisor: hv.kind, at: runningAt })}\n`);
        if (vmLink) return announceGateway(vmLink.dev, vmLink.ip, log).catch((err) => log.warn(`redirect: ${describeError(err)}`));
      },
      (err) => log.error(`${describeError(err)}\nthe disk is verified and served here; start the VM by hand`),
    );
    if (args.stdio) {
      // The source hangs up once it has DONE; the disk must go on being served.
      const logFile = join(args["run-dir"], `${args.name}.log`);
      log.info(`migration complete: now serving ${args.name}; logging to ${logFile}`);
      process.on("SIGHUP", () => undefined);
      process.on("SIGPIPE", () => undefined);
      process.stderr.on("error", () => undefined);
      process.stdout.on("error", () => undefined);
      await redirectLogsTo(logFile, [log, serveLog]);
      log.info(`migration complete: now serving ${args.name} (the ssh session that started us is gone)`);
    } else if (args.json) process.stdout.write(`${JSON.stringify({ event: "done", name: args.name, image: images.join(" + "), images })}\n`);
    log.info(`migration complete: now serving ${args.name}`);
    await new Promise<void>((resolve) => {
      const stop = async () => {
        svc?.stop();
        await undoRedirect(); // a clean exit leaves no network change behind
        resolve();
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    });
  },
});
