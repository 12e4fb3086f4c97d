// The flags of a migration's sending side (`source`, and `migrate`, which takes them too),
// and how the compound ones are read: the throttle, the network redirect, the destination.

import type { ArgsDef, ParsedArgs } from "citty";
import type { ThrottleParams } from "../disk/throttle/throttle-policy.ts";
import { UsageError } from "../errors.ts";
import { tlsArgs } from "../net/tls.ts";
import type { RedirectOptions } from "../phases/redirect.ts";
import { parseDuration } from "../util/duration.ts";
import { jsonArg, logArg, REPEATABLE } from "./_shared.ts";
import { parseHostPort } from "./_migration.ts";

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
    group: { type: "string", description: "a group of moves on this host (an evacuation): at most --concurrency of them run at once, and --bandwidth is the budget they share", valueHint: "NAME" },
    concurrency: { type: "string", description: "with --group: how many of the group's moves run at once on this host; the others wait their turn", default: "2", valueHint: "N" },
    streams: { type: "string", description: "TCP connections to the destination, used as one: auto (enough to fill 1 Gbit/s, or --bandwidth, at the measured round trip with this host's socket buffers; 1 on a LAN), or 1-16. ssh:// uses one", default: "auto", valueHint: "auto|N" },
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
    xbzrle: { type: "enum", options: ["auto", "off"], description: "with qemu: XBZRLE for the memory's copy when the link measures under 50 Mbit/s (auto), or never (off, the default until it is proven under TCG)", default: "off" },
    report: { type: "string", description: "draw the migration's timeline (throughput, delta queue, throttle, the pause) into FILE.svg or FILE.html", valueHint: "FILE" },
    ...jsonArg,
    ...logArg,
} as const satisfies ArgsDef;

export type SourceArgs = ParsedArgs<typeof sourceOptionArgs> & { name: string; "run-dir": string; to: string };

/** The destination host for the hypervisor (xl migrate's HOST): from HOST:PORT or ssh://[USER@]HOST[:PORT]. */
export function destHostOf(to: string): string {
  const ssh = /^ssh:\/\/((?:[^@/]+@)?(?:\[[^\]]+\]|[^:/]+))/.exec(to);
  return ssh ? ssh[1]!.replace(/\[|\]/g, "") : parseHostPort(to, "--to").host;
}

export function hostPort(spec: string): [string, number] {
  const { host, port } = parseHostPort(spec, "--to");
  return [host, port];
}

export function throttleParams(args: { "throttle-threshold"?: string; "throttle-delay"?: string }): Partial<ThrottleParams> | undefined {
  const p: Partial<ThrottleParams> = {};
  if (args["throttle-threshold"] !== undefined) {
    const n = Number(args["throttle-threshold"]);
    if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`--throttle-threshold ${args["throttle-threshold"]} is not a count of deltas`, "write a whole number >= 1");
    p.threshold = n;
  }
  if (args["throttle-delay"] !== undefined) p.delayUs = Math.round(parseDuration(args["throttle-delay"], "--throttle-delay") * 1000);
  return Object.keys(p).length ? p : undefined;
}

export function redirectOptions(args: Record<string, unknown>): RedirectOptions | undefined {
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

