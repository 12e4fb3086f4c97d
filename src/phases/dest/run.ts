// The destination's whole run, stage by stage: its images made ready, the disk received
// (resumes included) or, verified before a restart, served again; then released to the VM
// here, and served until stopped. Receiving itself, frame by frame, is receive.ts's.

import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DiskService } from "../../disk/service/disk-service.ts";
import { stateFilePath } from "../../disk/image/image-state.ts";
import { describeError, ServeError } from "../../errors.ts";
import { redirectLogsTo } from "../../log.ts";
import { pipeChannel, stdoutSink } from "../../net/channel.ts";
import { fileProblem } from "../../util/os-errors.ts";
import { ReceiveError } from "../errors.ts";
import { Receiver } from "../receive.ts";
import { answerLateQueries, type Connections, listenForSources } from "./connections.ts";
import { type PreparedImages, prepareImages } from "./images.ts";
import type { DestOptions } from "./options.ts";
import { RedirectEnd } from "./redirect-end.ts";

/**
 * How long a TCP dest keeps its port after completing, for a source that lost DONE: long
 * enough for the source's own reconnects, short enough that a runbook moving the next VM
 * to the same port does not trip on it. Later, `wanmig dest` run again answers instead.
 */
const LATE_ANSWER_MS = 60_000;

/** A retired server (its disk moved away, the VM comes back): the same clean stop as an operator's SIGTERM. */
const stopThisProcess = () => process.kill(process.pid, "SIGTERM");

/** What the run holds while it receives: the receiver, the server it starts (held), the redirect's end. */
interface Receiving {
  receiver: Receiver;
  served: { svc?: DiskService };
  redirect: RedirectEnd;
  /** Lets the held I/O through: the disk is verified. */
  release: () => void;
}

export async function runDest(o: DestOptions): Promise<void> {
  const images = await prepareImages(o);
  const r = startReceiver(o, images);
  // After the checks above: the pid file of a dest that serves NAME here is not ours to replace.
  if (o.pidFile) writePidFile(o.pidFile);
  const conns = r.receiver.verifiedRecording ? await serveVerified(o, r, images) : await receiveDisk(o, r, images);
  if (conns === "answered") return;
  if (conns) void answerLateQueries(conns, r.receiver, Math.min(LATE_ANSWER_MS, o.resumeTimeout.ms));
  await releaseToVm(o, r);
  await serveUntilStopped(o, r);
}

function startReceiver(o: DestOptions, { state }: PreparedImages): Receiving {
  const { images, log } = o;
  const served: Receiving["served"] = {};
  const redirect = new RedirectEnd(o);
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const receiver: Receiver = new Receiver({
    images,
    creds: o.creds,
    log,
    state,
    onAuthenticated: async () => {
      // A VM whose QEMU is waiting here reads its disk at start-up: let reads through (nbd-server.ts).
      served.svc = await DiskService.start({ images, name: o.name, runDir: o.runDir, hold: held, holdWritesOnly: o.hv.readsBeforeRelease, log: o.serveLog, state, onRetire: stopThisProcess });
      served.svc.incoming = () => receiver.progress();
    },
    // The image is the VM's disk here from now on: a fence an earlier migration away from
    // this host left on it (this is the way back) is lifted, durably, before DONE goes out.
    onVerified: () => {
      if (served.svc?.fencing.fenced || state.state.fence) served.svc?.unfence("the incoming migration is verified: the VM's disk lives here again", { force: true });
    },
    onRedirect: (m) => redirect.open(m),
  });
  return { receiver, served, redirect, release };
}

function writePidFile(pidFile: string): void {
  try {
    writeFileSync(pidFile, `${process.pid}\n`);
  } catch (cause) {
    throw new ServeError(`cannot write --pid-file ${pidFile}: ${fileProblem(cause)}`, { hint: "pick a path in a directory that exists and that you may write in" });
  }
  process.on("exit", () => rmSync(pidFile, { force: true }));
}

/** The protocol on stdin/stdout, for `ssh HOST wanmig dest --stdio`. */
function stdioChannel() {
  return pipeChannel(Bun.stdin.stream(), stdoutSink());
}

/**
 * Verified before a restart: served again; a source that lost DONE may still ask. "answered":
 * another process (the dest daemon of that migration) serves the image, and this run only
 * answered the recovering source's question.
 */
async function serveVerified(o: DestOptions, r: Receiving, { state }: PreparedImages): Promise<Connections | undefined | "answered"> {
  const { log, images } = o;
  log.info(`the incoming migration ${r.receiver.verifiedRecording} was verified here before a restart; serving ${images.join(" + ")}`);
  try {
    r.served.svc = await DiskService.start({ images, name: o.name, runDir: o.runDir, log: o.serveLog, state, onRetire: stopThisProcess });
  } catch (err) {
    if (!(err instanceof ServeError) || !/in use/.test(err.message)) throw err;
    log.info("another process serves the image; answering the source's question only");
    if (!o.listen) await r.receiver.serve(stdioChannel());
    else await answerLateQueries(listenForSources(o.listen, o.name, log, r.receiver), r.receiver, o.resumeTimeout.ms, true);
    return "answered";
  }
  if (!o.listen) {
    await r.receiver.serve(stdioChannel());
    return undefined;
  }
  return listenForSources(o.listen, o.name, log, r.receiver);
}

/** Receives the disk; on failure, nothing of this run stays: the redirect's end, the server, and (if asked) the images it created. */
async function receiveDisk(o: DestOptions, r: Receiving, { created }: PreparedImages): Promise<Connections | undefined> {
  try {
    return await receiveConnections(o, r.receiver);
  } catch (err) {
    await r.redirect.undo();
    r.served.svc?.stop();
    if (o.removeOnAbort && created.length) {
      for (const image of created) {
        rmSync(image, { force: true });
        rmSync(stateFilePath(image), { force: true });
      }
      o.log.warn(`migration aborted: removed ${created.join(", ")}, which this run had created`);
    }
    throw err;
  }
}

/**
 * Runs connections from the source until the migration completes (TCP: resumes included).
 * Returns the listener still open (TCP), so a source that lost DONE can ask a while longer.
 */
async function receiveConnections(o: DestOptions, receiver: Receiver): Promise<Connections | undefined> {
  if (!o.listen) {
    const outcome = await receiver.serve(stdioChannel());
    if (outcome === "dropped") throw new ReceiveError("the ssh link broke; run the migration again");
    if (outcome === "rejected") throw new ReceiveError("the source's handshake failed (see above)");
    return undefined;
  }
  const conns = listenForSources(o.listen, o.name, o.log, receiver);
  try {
    for (let started = false; ; ) {
      // Wait for the first source as long as it takes; for a resume, a bounded time.
      const next = await conns.next(started ? o.resumeTimeout.ms : Number.MAX_SAFE_INTEGER);
      if (!next) throw new ReceiveError(`the source did not come back within ${o.resumeTimeout.text} s`);
      const outcome = await receiver.serve(next.ch, next.hello);
      if (outcome === "completed") return conns;
      if (outcome === "dropped") started = true;
    }
  } catch (err) {
    conns.close();
    throw err;
  }
}

/** JSON events on stdout: not over ssh, where stdout is the protocol. */
function event(o: DestOptions, e: Record<string, unknown>): void {
  if (o.json && o.listen) process.stdout.write(`${JSON.stringify(e)}\n`);
}

/**
 * The held I/O goes through, and the VM runs here. The disk is verified and served from here
 * on, whatever the hypervisor says next: a VM that fails to start here is an operator's call,
 * not a reason to drop its disk.
 */
async function releaseToVm(o: DestOptions, r: Receiving): Promise<void> {
  const { hv, log } = o;
  r.release();
  r.redirect.teardownWhenIdle((lastPacketAt) => event(o, { event: "redirect-teardown", lastPacketAt, at: Date.now() }));
  await hv.release().then(
    ({ runningAt }) => {
      if (hv.kind === "none") return;
      log.info(`the VM runs here (${hv.kind}) since ${new Date(runningAt).toISOString()}`);
      event(o, { event: "running", hypervisor: hv.kind, at: runningAt });
      return r.redirect.announce();
    },
    (err) => log.error(`${describeError(err)}\nthe disk is verified and served here; start the VM by hand`),
  );
}

/** The disk served here until SIGINT or SIGTERM; a clean exit leaves no network change behind. */
async function serveUntilStopped(o: DestOptions, r: Receiving): Promise<void> {
  const { log, name } = o;
  if (!o.listen) {
    // The source hangs up once it has DONE; the disk must go on being served.
    const logFile = join(o.runDir, `${name}.log`);
    log.info(`migration complete: now serving ${name}; logging to ${logFile}`);
    process.on("SIGHUP", () => undefined);
    process.on("SIGPIPE", () => undefined);
    process.stderr.on("error", () => undefined);
    process.stdout.on("error", () => undefined);
    await redirectLogsTo(logFile, [log, o.serveLog]);
    log.info(`migration complete: now serving ${name} (the ssh session that started us is gone)`);
  } else event(o, { event: "done", name, image: o.images.join(" + "), images: o.images });
  log.info(`migration complete: now serving ${name}`);
  await new Promise<void>((resolve) => {
    const stop = async () => {
      r.served.svc?.stop();
      await r.redirect.undo();
      resolve();
    };
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
}
