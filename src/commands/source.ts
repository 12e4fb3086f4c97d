// `wanmig source`: a migration of a locally served disk to a waiting `wanmig dest` (or one
// started over ssh), its progress and summary printed; the run itself is src/phases/source/.

import { defineCommand } from "citty";
import { writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { ControlClient } from "../disk/service/control-client.ts";
import { controlSocketPath, type ServeStatus, servedImages } from "../disk/service/status.ts";
import { UsageError } from "../errors.ts";
import { sourceHypervisor } from "../hypervisor/index.ts";
import { type Logger, logger, setLogLevel } from "../log.ts";
import { connectTcp } from "../net/channel.ts";
import { parseCompress } from "../net/compress.ts";
import { parseStreams, type StreamsSetting } from "../net/stream-count.ts";
import { parseRate, TokenBucket } from "../net/rate.ts";
import { clientTls, tlsFromArgs } from "../net/tls.ts";
import type { MigrationMetrics } from "../phases/source/metrics.ts";
import { runSource } from "../phases/source/run.ts";
import { recoverStaleJournal } from "../redirect/journal.ts";
import type { Redirect } from "../redirect/redirect.ts";
import { parseSshUrl, sshChannel } from "../remote/ssh.ts";
import { summary } from "../report/summary.ts";
import { Timeline } from "../report/timeline.ts";
import { parseDuration } from "../util/duration.ts";
import { parseSize } from "../util/size.ts";
import { credentials, writableDir } from "./_migration.ts";
import { joinMoveGroup, sendInGroup } from "./_group.ts";
import { progressReporter } from "./_progress.ts";
import type { GroupMove } from "./_group.ts";
import { nameArg, runDirArg, valuesOf } from "./_shared.ts";
import { destHostOf, hostPort, redirectOptions, type SourceArgs, sourceOptionArgs, throttleParams } from "./_source-args.ts";

export { sourceOptionArgs } from "./_source-args.ts";

/** The remote `wanmig dest --stdio` argv for an ssh:// destination. */
async function remoteDestArgv(
  args: { name: string; "run-dir": string; "dest-run-dir"?: string; "remote-bin": string },
  destImages: string[],
  extra: string[],
): Promise<string[]> {
  const status = await new ControlClient(controlSocketPath(args["run-dir"], args.name)).status();
  const images = remoteImages(destImages, status, "--dest-image");
  return [
    args["remote-bin"], "dest", "--stdio", "--name", args.name,
    ...images.flatMap((image) => ["--image", image]), "--run-dir", args["dest-run-dir"] ?? args["run-dir"], ...extra,
  ];
}

/** The images there: as given (once per disk), or the same paths as here. */
export function remoteImages(given: string[], status: Pick<ServeStatus, "disks">, flag: string): string[] {
  if (!given.length) return servedImages(status);
  if (given.length !== status.disks.length)
    throw new UsageError(`${given.length} ${flag} for a VM with ${status.disks.length} disk${status.disks.length === 1 ? "" : "s"}`, `give ${flag} once per disk, in the order of serve's --image, or not at all (the same paths there)`);
  return given;
}

/**
 * Runs a migration as `wanmig source` does: the transfer, the summary, then the redirect
 * until idle. `remoteDestArgs`: more flags for an ssh:// destination's `wanmig dest`.
 */
export async function runSourceCommand(args: SourceArgs, opts: { destImages?: string[]; remoteDestArgs?: string[]; remoteWrapper?: string[]; group?: GroupMove } = {}): Promise<void> {
    if (args.log) setLogLevel(args.log);
    const log = logger("migration sender");
    const signals = interruptOnSignal(log);
    const rate = args.bandwidth ? new TokenBucket(parseRate(args.bandwidth, "--bandwidth")) : undefined;
    const progress = progressReporter(process.stderr);
    const report = timelineReport(args, log);
    const show = args.json ? (e: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(e)}\n`) : progress.onEvent;
    const ssh = args.to.startsWith("ssh://");
    // Over SSH, SSH authenticates and encrypts; a secret file is still honoured if given.
    if (ssh && args.tls) throw new UsageError("--tls is for a destination over TCP; ssh:// encrypts and authenticates already");
    const tls = tlsFromArgs(args);
    const creds = ssh && !args["secret-file"] ? {} : credentials(args, "source");
    const hypervisor = sourceHypervisor(args, destHostOf(args.to), log);
    if (args["old-ip"]) await recoverStaleJournal(args["run-dir"], args.name, log);
    const group = opts.group ?? (await joinMoveGroup(args, (e, text) => (args.json ? show(e) : log.info(text))));
    const stopSending = sendInGroup(group, rate, log);
    const { metrics: m, redirect } = await runSource({
      redirect: redirectOptions(args),
      hypervisor,
      name: args.name,
      runDir: args["run-dir"],
      to: args.to,
      connect: async () => {
        const ch = ssh
          ? sshChannel(parseSshUrl(args.to), [...(opts.remoteWrapper ?? []), ...(await remoteDestArgv(args, opts.destImages ?? [], opts.remoteDestArgs ?? []))], log)
          : await connectTcp(...hostPort(args.to), tls && clientTls(tls, hostPort(args.to)[0]));
        ch.rate = rate;
        return ch;
      },
      creds,
      streams: ssh ? 1 : streamsArg(args.streams),
      compress: parseCompress(args.compress),
      mode: args.mode as "live" | "freeze-and-copy",
      deltas: args.deltas as "paper" | "coalesce",
      throttle: throttleParams(args),
      maxDowntimeMs: parseDuration(args["max-downtime"], "--max-downtime"),
      timeout: args.timeout === undefined ? undefined : { ms: parseDuration(args.timeout, "--timeout"), action: args["timeout-action"] as "abort" | "freeze", text: args.timeout },
      maxLogBytes: args["max-log-size"] === undefined ? undefined : parseSize(args["max-log-size"], "--max-log-size"),
      log,
      interrupted: () => signals.interrupted,
      onEvent: (e) => {
        report?.add(e);
        group?.progress.event(e);
        show(e);
      },
    })
      .catch((err: unknown) => {
        group?.progress.end("failed", (err as Error).message);
        throw err;
      })
      .finally(() => {
        stopSending();
        group?.group.leave(); // the move is over: a redirect still tunnelling takes no slot
        progress.end();
      });
    if (!args.json) process.stdout.write(summary(args.name, m));
    report?.draw(m);
    if (redirect) await waitForRedirectIdle(redirect, args, log, signals);
}

/** --report FILE: checked before the migration, drawn from its events after it. */
function timelineReport(args: SourceArgs, log: Logger): { add(e: Parameters<Timeline["add"]>[0]): void; draw(m: MigrationMetrics): void } | undefined {
  const file = args.report;
  if (file === undefined) return undefined;
  if (!/\.(svg|html)$/.test(file)) throw new UsageError(`--report ${file}: name a .svg or .html file`);
  // Written at the end: a directory that is not there must not fail a migration that succeeded.
  writableDir(dirname(resolve(file)), `--report ${file}`);
  const timeline = new Timeline();
  return {
    add: (e) => timeline.add(e),
    draw(m) {
      const title = `wanmig: ${args.name} to ${args.to}, ${new Date().toISOString().slice(0, 19)}Z`;
      writeFileSync(file, file.endsWith(".html") ? timeline.html(title, { ...m }) : timeline.svg(title));
      log.info(`timeline drawn in ${file}`);
    },
  };
}

/**
 * Ctrl-C: before the point of no return the migration stops there and then, and the VM stays
 * here; after it, it finishes (stopping then would leave the VM nowhere). A second Ctrl-C
 * exits at once.
 */
function interruptOnSignal(log: Logger) {
  const state = {
    interrupted: false,
    off: () => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    },
  };
  const onSignal = (sig: string) => {
    if (state.interrupted) process.exit(130);
    state.interrupted = true;
    log.warn(`${sig}: stopping before the point of no return if it has not passed; else finishing (again to exit at once)`);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  return state;
}

/** The migration is done and reported; the tunnel stays until nothing uses it. */
async function waitForRedirectIdle(redirect: Redirect, args: SourceArgs, log: Logger, signals: { off(): void }): Promise<void> {
  const idleMs = parseDuration(args["tunnel-idle"], "--tunnel-idle");
  log.info(`redirect: waiting until ${redirect.spec.iface} carries no packet for ${args["tunnel-idle"]}`);
  const stop = () => redirect.teardown().finally(() => process.exit(130));
  signals.off();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  const { lastPacketAt } = await redirect.teardownWhenIdle(idleMs);
  if (args.json) process.stdout.write(`${JSON.stringify({ event: "redirect-teardown", lastPacketAt, at: Date.now() })}\n`);
}

export default defineCommand({
  meta: { name: "source", description: "Migrate a locally served disk to a waiting `wanmig dest`" },
  args: {
    ...nameArg,
    ...runDirArg,
    to: { type: "string", description: "the destination: a waiting `wanmig dest --listen`, or ssh:// to start one", required: true, valueHint: "HOST:PORT|ssh://[USER@]HOST[:PORT]" },
    ...sourceOptionArgs,
  },
  run: ({ args, rawArgs }) => runSourceCommand(args, { destImages: valuesOf(rawArgs, "dest-image") }),
});

function streamsArg(text: string | undefined): StreamsSetting {
  try {
    return parseStreams(text ?? "auto");
  } catch {
    throw new UsageError(`cannot read --streams ${JSON.stringify(text)}`, "use auto, or a whole number of TCP connections from 1 to 16");
  }
}
