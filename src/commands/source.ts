import { type ArgsDef, defineCommand, type ParsedArgs } from "citty";
import { parseSshUrl, sshChannel } from "../remote/ssh.ts";
import { writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { Timeline } from "../report/timeline.ts";
import { logger, setLogLevel } from "../log.ts";
import { connectTcp } from "../net/channel.ts";
import { clientTls, tlsArgs, tlsFromArgs } from "../net/tls.ts";
import { ControlClient } from "../disk/control-client.ts";
import { controlSocketPath, type ServeStatus, servedImages } from "../disk/disk-service.ts";
import { parseCompress } from "../net/compress.ts";
import { parseRate, TokenBucket } from "../net/rate.ts";
import { type MigrationMetrics, runSource } from "../phases/source-run.ts";
import { formatBytes } from "../util/format.ts";
import { jsonArg, logArg, nameArg, REPEATABLE, runDirArg, valuesOf } from "./_shared.ts";
import { credentials, parseHostPort, writableDir } from "./_migration.ts";
import { UsageError } from "../errors.ts";
import { sourceHypervisor } from "../hypervisor/index.ts";
import type { RedirectOptions } from "../phases/redirect.ts";
import { recoverStaleJournal } from "../redirect/journal.ts";
import { progressReporter } from "./_progress.ts";
import type { ThrottleParams } from "../disk/throttle-policy.ts";
import { parseDuration } from "../util/duration.ts";
import { parseSize } from "../util/size.ts";

/** The destination host for the hypervisor (xl migrate's HOST): from HOST:PORT or ssh://[USER@]HOST[:PORT]. */
function destHostOf(to: string): string {
  const ssh = /^ssh:\/\/((?:[^@/]+@)?(?:\[[^\]]+\]|[^:/]+))/.exec(to);
  return ssh ? ssh[1]!.replace(/\[|\]/g, "") : parseHostPort(to, "--to").host;
}

function hostPort(spec: string): [string, number] {
  const { host, port } = parseHostPort(spec, "--to");
  return [host, port];
}

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

function throttleParams(args: { "throttle-threshold"?: string; "throttle-delay"?: string }): Partial<ThrottleParams> | undefined {
  const p: Partial<ThrottleParams> = {};
  if (args["throttle-threshold"] !== undefined) {
    const n = Number(args["throttle-threshold"]);
    if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`--throttle-threshold ${args["throttle-threshold"]} is not a count of deltas`, "write a whole number >= 1");
    p.threshold = n;
  }
  if (args["throttle-delay"] !== undefined) p.delayUs = Math.round(parseDuration(args["throttle-delay"], "--throttle-delay") * 1000);
  return Object.keys(p).length ? p : undefined;
}

/** "zstd 19 for 92 %, 15 for 6 %, none for 2 %": the levels the image's bytes went at. */
function compressionLine(levels: Record<string, number>, streamed: number): string {
  const total = Object.values(levels).reduce((a, b) => a + b, 0);
  if (!total) return "nothing sent";
  const parts = Object.entries(levels)
    .filter(([, b]) => b > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([l, b]) => `${l === "0" ? "none" : `zstd ${l}`} for ${((b / total) * 100).toFixed(0)} %`);
  const stream = streamed ? `; ${((streamed / total) * 100).toFixed(0)} % of the bytes as one long-window stream (a slow link)` : "";
  return parts.join(", ") + stream;
}

/** The final summary: the paper's metrics, one per line, downtime first. */
function summary(name: string, m: MigrationMetrics): string {
  const rows: [string, string][] = [
    ...(m.downtimeMs !== m.storageDowntimeMs ? ([["VM downtime", `${m.downtimeMs} ms (paused at the source until the hypervisor reported the move complete)`]] as [string, string][]) : []),
    [
      "storage downtime",
      `${m.storageDowntimeMs} ms${m.estimatedStorageDowntimeMs !== undefined ? ` (expected ${m.estimatedStorageDowntimeMs} ms; budget ${m.maxDowntimeMs} ms and a round trip)` : ""} (fence to the destination's verified image${
        m.storageDowntimeParts
          ? ` = ${m.storageDowntimeParts.fenceAndLastDeltasMs} fence and ${m.finalDeltas} last deltas + ${m.storageDowntimeParts.digestMs} digest here + ${m.storageDowntimeParts.destinationMs} destination applying and verifying`
          : ""
      })`,
    ],
    ["bulk copy", `${formatBytes(m.bulkBytes)} sent as ${formatBytes(m.bulkWireBytes)}; ${m.bulkZeroBlocks} zero blocks skipped${m.bulkHoleBytes ? ` (${formatBytes(m.bulkHoleBytes)} of holes not even read)` : ""}${m.bulkBaseBlocks ? `, ${m.bulkBaseBlocks} already in the destination's base` : ""}`],
    ["compression", compressionLine(m.compressLevels, m.bulkStreamedBytes)],
    ["deltas", `${m.deltaCount} sent (${formatBytes(m.deltaBytes)} as ${formatBytes(m.deltaWireBytes)}), ${m.deltasSkipped} skipped, ${m.deltaRatePerSec}/s${m.copyPasses ? `; ${m.copyPasses} copy ${m.copyPasses === 1 ? "pass" : "passes"} sent ${formatBytes(m.copiedBytes)} of the image in place of the records they stand for` : ""}`],
    ...(m.disks && m.disks.length > 1
      ? m.disks.map((d): [string, string] => [`  ${d.export}`, `${d.deltas} deltas (${formatBytes(d.bytes)}), ${d.finalDeltas} of them in the hand-off (${formatBytes(d.finalBytes)})`])
      : []),
    ["on the wire", formatBytes(m.bytesOnWire)],
    ["throttle", `highest level ${m.throttleSteps}`],
  ];
  if (m.frozen) rows.push(["timeout", m.frozen]);
  if (m.reconnects) rows.push(["link", `${m.reconnects} reconnect(s), resumed`]);
  return `migrated ${name} in ${(m.migrationTimeMs / 1000).toFixed(1)} s\n${rows.map(([k, v]) => `  ${k.padEnd(17)}${v}`).join("\n")}\n`;
}

function redirectOptions(args: Record<string, unknown>): RedirectOptions | undefined {
  const oldIp = args["old-ip"] as string | undefined;
  const dnsFlags = ["dns-name", "dns-server", "dns-key"].filter((k) => args[k] !== undefined);
  if (!oldIp) {
    if (args["new-ip"] || dnsFlags.length) throw new UsageError("--new-ip and --dns-* need --old-ip (the address to redirect)");
    return undefined;
  }
  if (dnsFlags.length && dnsFlags.length < 3) throw new UsageError("a DNS update needs --dns-name, --dns-server and --dns-key together");
  if (dnsFlags.length && !args["new-ip"]) throw new UsageError("a DNS update needs --new-ip");
  let dns: RedirectOptions["dns"];
  if (dnsFlags.length) {
    const server = String(args["dns-server"]);
    const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(server);
    if (!m) throw new UsageError(`cannot read --dns-server ${server}`, "write HOST or HOST:PORT");
    const ttl = Number(args["dns-ttl"]);
    if (!Number.isSafeInteger(ttl) || ttl < 0) throw new UsageError(`--dns-ttl ${args["dns-ttl"]} is not a number of seconds`);
    dns = { name: String(args["dns-name"]), server: m[1]!.replace(/^\[|\]$/g, ""), port: Number(m[2] ?? 53), keyFile: String(args["dns-key"]), ttl };
  }
  return {
    mode: args.tunnel as RedirectOptions["mode"],
    oldIp,
    newIp: args["new-ip"] as string | undefined,
    idleMs: parseDuration(String(args["tunnel-idle"]), "--tunnel-idle"),
    local: args["tunnel-local"] as string | undefined,
    remote: args["tunnel-remote"] as string | undefined,
    dns,
  };
}

/** Every option of a migration's sending side; `migrate` takes them too. */
export const sourceOptionArgs = {
    "dest-image": { type: "string", description: "with ssh://: an image path there, once per disk (default: the same paths as here)", valueHint: "PATH", ...REPEATABLE },
    "dest-run-dir": { type: "string", description: "with ssh://: the run directory there (default: the same as here)", valueHint: "DIR" },
    "remote-bin": { type: "string", description: "with ssh://: the wanmig command there", default: "wanmig", valueHint: "PATH" },
    "secret-file": { type: "string", description: "shared secret (never sent)", valueHint: "F" },
    ...tlsArgs,
    insecure: { type: "boolean", description: "no secret: frames in the clear (the only way to a plaintext stream), to a destination that proves nothing", default: false },
    mode: { type: "enum", options: ["live", "freeze-and-copy"], description: "live (copy while the VM runs) or freeze-and-copy (the baseline: stop writes, then copy)", default: "live" },
    deltas: { type: "enum", options: ["paper", "coalesce"], description: "paper: send every delta; coalesce: skip what the bulk copy carries and repeated writes", default: "coalesce" },
    compress: { type: "string", description: "zstd on the wire: auto (the level that moves data fastest over the link as measured, none on a link faster than the CPU), zstd[:LEVEL] (fixed, 1-19; zstd alone is 1), or none", default: "auto", valueHint: "auto|zstd[:LEVEL]|none" },
    bandwidth: { type: "string", description: "cap the migration stream: 5mbit, 100mbit, 10MB (per second)", valueHint: "RATE" },
    "max-downtime": { type: "string", description: "fence only when the disk's hand-off is expected to take at most this (one round trip to the destination comes on top); the VM's writes are throttled until it does", default: "50ms", valueHint: "DURATION" },
    timeout: { type: "string", description: "give the migration this long, from its start: 10m, 1h (then --timeout-action)", valueHint: "DURATION" },
    "timeout-action": { type: "enum", options: ["abort", "freeze"], description: "at --timeout: abort (the VM runs on here, exit 5) or freeze (fence now and copy what is left: a longer downtime)", default: "abort" },
    "max-log-size": { type: "string", description: "bound the delta log (default: half the free space of its file system, after what the image may still grow); nearing it throttles harder, reaching it aborts", valueHint: "SIZE" },
    "throttle-threshold": { type: "string", description: "the paper's throttle instead of --max-downtime's: delay the VM's writes once this many deltas are queued (doubling at 2N, 4N, ...)", valueHint: "N" },
    "throttle-delay": { type: "string", description: "with the paper's throttle: the first step's delay per write (doubling with each step): 2ms, 500us", valueHint: "DURATION" },
    "old-ip": { type: "string", description: "redirect: the VM's address here, tunnelled to the destination so open connections survive", valueHint: "ADDR" },
    "new-ip": { type: "string", description: "redirect: the VM's address at the destination (DNS is pointed at it)", valueHint: "ADDR" },
    tunnel: { type: "enum", options: ["vxlan", "ipip", "gre"], description: "redirect: the tunnel's kind", default: "vxlan" },
    "tunnel-idle": { type: "string", description: "redirect: tear the tunnel down after this long without a packet", default: "60s", valueHint: "DURATION" },
    "tunnel-local": { type: "string", description: "redirect: this host's tunnel address (default: the migration connection's)", valueHint: "ADDR" },
    "tunnel-remote": { type: "string", description: "redirect: the destination host's tunnel address (default: the migration connection's)", valueHint: "ADDR" },
    "dns-name": { type: "string", description: "redirect: the VM's DNS name, updated to --new-ip (RFC 2136)", valueHint: "FQDN" },
    "dns-server": { type: "string", description: "redirect: the DNS server taking the update", valueHint: "HOST[:PORT]" },
    "dns-key": { type: "string", description: "redirect: the TSIG key file for nsupdate -k", valueHint: "FILE" },
    "dns-ttl": { type: "string", description: "redirect: the new record's TTL (seconds)", default: "30", valueHint: "SECONDS" },
    hypervisor: { type: "enum", options: ["none", "xl", "qemu", "libvirt"], description: "who moves the memory: none (storage only), xl (Xen), qemu (QMP), libvirt (virsh migrate)", default: "none" },
    domain: { type: "string", description: "with xl or libvirt: the domain to migrate", valueHint: "DOMAIN" },
    "libvirt-uri": { type: "string", description: "with libvirt: this host's libvirt (virsh -c; default: virsh's own)", valueHint: "URI" },
    "dest-uri": { type: "string", description: "with libvirt: the destination's libvirt, where virsh migrate sends the domain (default: qemu+ssh://HOST/system, HOST from --to)", valueHint: "URI" },
    "xl-ssh": { type: "string", description: "with xl: the command xl migrate uses to reach the destination (its -s; \"\" runs --xl-host itself)", valueHint: "CMD" },
    "xl-host": { type: "string", description: "with xl: xl migrate's HOST (default: the host of --to); with --xl-ssh \"\", the receiver's whole command, e.g. \"xl migrate-receive -p\"", valueHint: "HOST|CMD" },
    "xl-config": { type: "string", description: "with xl: the domain config for the destination (its -C)", valueHint: "FILE" },
    qmp: { type: "string", description: "with qemu: the source QEMU's QMP socket", valueHint: "unix:PATH" },
    "migrate-uri": { type: "string", description: "with qemu: where the destination QEMU listens (-incoming)", valueHint: "tcp:HOST:PORT" },
    report: { type: "string", description: "draw the migration's timeline (throughput, delta queue, throttle, the pause) into FILE.svg or FILE.html", valueHint: "FILE" },
    ...jsonArg,
    ...logArg,
} as const satisfies ArgsDef;

type SourceArgs = ParsedArgs<typeof sourceOptionArgs> & { name: string; "run-dir": string; to: string };

/**
 * Runs a migration as `wanmig source` does: the transfer, the summary, then the redirect
 * until idle. `remoteDestArgs`: more flags for an ssh:// destination's `wanmig dest`.
 */
export async function runSourceCommand(args: SourceArgs, opts: { destImages?: string[]; remoteDestArgs?: string[]; remoteWrapper?: string[] } = {}): Promise<void> {
    if (args.log) setLogLevel(args.log);
    const log = logger("migration sender");
    // Ctrl-C: before the point of no return the migration stops there and then, and the VM
    // stays here; after it, it finishes (stopping then would leave the VM nowhere). A
    // second Ctrl-C exits at once.
    let interrupted = false;
    const onSignal = (sig: string) => {
      if (interrupted) process.exit(130);
      interrupted = true;
      log.warn(`${sig}: stopping before the point of no return if it has not passed; else finishing (again to exit at once)`);
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    const rate = args.bandwidth ? new TokenBucket(parseRate(args.bandwidth, "--bandwidth")) : undefined;
    const progress = progressReporter(process.stderr);
    if (args.report && !/\.(svg|html)$/.test(args.report)) throw new UsageError(`--report ${args.report}: name a .svg or .html file`);
    // Written at the end: a directory that is not there must not fail a migration that succeeded.
    if (args.report) writableDir(dirname(resolve(args.report)), `--report ${args.report}`);
    const timeline = args.report ? new Timeline() : undefined;
    const show = args.json ? (e: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(e)}\n`) : progress.onEvent;
    const ssh = args.to.startsWith("ssh://");
    // Over SSH, SSH authenticates and encrypts; a secret file is still honoured if given.
    if (ssh && args.tls) throw new UsageError("--tls is for a destination over TCP; ssh:// encrypts and authenticates already");
    const tls = tlsFromArgs(args);
    const creds = ssh && !args["secret-file"] ? {} : credentials(args, "source");
    const hypervisor = sourceHypervisor(args, destHostOf(args.to), log);
    if (args["old-ip"]) await recoverStaleJournal(args["run-dir"], args.name, log);
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
      compress: parseCompress(args.compress),
      mode: args.mode as "live" | "freeze-and-copy",
      deltas: args.deltas as "paper" | "coalesce",
      throttle: throttleParams(args),
      maxDowntimeMs: parseDuration(args["max-downtime"], "--max-downtime"),
      timeout: args.timeout === undefined ? undefined : { ms: parseDuration(args.timeout, "--timeout"), action: args["timeout-action"] as "abort" | "freeze", text: args.timeout },
      maxLogBytes: args["max-log-size"] === undefined ? undefined : parseSize(args["max-log-size"], "--max-log-size"),
      log,
      interrupted: () => interrupted,
      onEvent: (e) => {
        timeline?.add(e);
        show(e);
      },
    }).finally(() => progress.end());
    if (!args.json) process.stdout.write(summary(args.name, m));
    if (timeline && args.report) {
      const title = `wanmig: ${args.name} to ${args.to}, ${new Date().toISOString().slice(0, 19)}Z`;
      writeFileSync(args.report, args.report.endsWith(".html") ? timeline.html(title, { ...m }) : timeline.svg(title));
      log.info(`timeline drawn in ${args.report}`);
    }
    if (redirect) {
      // The migration is done and reported; the tunnel stays until nothing uses it.
      const idleMs = parseDuration(args["tunnel-idle"], "--tunnel-idle");
      log.info(`redirect: waiting until ${redirect.spec.iface} carries no packet for ${args["tunnel-idle"]}`);
      const emit = (e: Record<string, unknown>) => args.json && process.stdout.write(`${JSON.stringify(e)}\n`);
      const stop = () => redirect.teardown().finally(() => process.exit(130));
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      const { lastPacketAt } = await redirect.teardownWhenIdle(idleMs);
      emit({ event: "redirect-teardown", lastPacketAt, at: Date.now() });
    }
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
