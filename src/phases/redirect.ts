// Phase 5, redirect (the source's side): the tunnel for the VM's open connections and the
// DNS update for new ones. Set up just before the VM pauses; the old address is routed
// into the tunnel once the VM runs at the destination; torn down when idle.

import { createHash } from "node:crypto";
import type { Logger } from "../log.ts";
import type { Channel } from "../net/channel.ts";
import { ProtocolError } from "../net/errors.ts";
import { msg, MsgType, typeName } from "../net/protocol.ts";
import { type DnsUpdate, updateDns, waitUntilAnswers } from "../redirect/dns.ts";
import { RedirectError } from "../redirect/journal.ts";
import type { TunnelMode, TunnelSpec } from "../redirect/plan.ts";
import { Redirect } from "../redirect/redirect.ts";

export interface RedirectOptions {
  mode: TunnelMode;
  oldIp: string;
  newIp?: string;
  idleMs: number;
  /** The tunnel's outer endpoints; default: the addresses of the migration's TCP connection. */
  local?: string;
  remote?: string;
  dns?: DnsUpdate;
}

/** Names, VXLAN id and routing table derived from the VM's name: stable, so a crash's leftovers are recognisable. */
export function tunnelSpec(name: string, o: RedirectOptions, local: string, remote: string): TunnelSpec {
  const h = createHash("sha256").update(name).digest();
  const vni = (h.readUInt32BE(0) % 16_000_000) + 1;
  return { mode: o.mode, iface: `wm${h.toString("hex").slice(0, 8)}`, local, remote, oldIp: o.oldIp, vni, table: 1000 + (vni % 30000) };
}

/** Both tunnel ends, before the VM pauses: ours, then the destination's (it answers REDIRECT_READY). */
export async function setUpRedirect(ch: Channel, o: RedirectOptions, at: { runDir: string; name: string }, log: Logger): Promise<Redirect> {
  const local = o.local ?? ch.localAddress;
  const remote = o.remote ?? ch.remoteAddress;
  if (!local || !remote) throw new RedirectError("the tunnel's endpoints are not known over this transport", { hint: "pass --tunnel-local ADDR and --tunnel-remote ADDR" });
  // A connection over loopback (a relay, an SSH forward) does not name the hosts: a tunnel
  // between its ends would lead back into this host, and the VM's clients would lose it.
  for (const [which, addr, given] of [["local", local, o.local], ["remote", remote, o.remote]] as const)
    if (given === undefined && isLoopback(addr))
      throw new RedirectError(`the migration's connection is over loopback (${which} ${addr}), so its ends are not the hosts' addresses: pass --tunnel-local ADDR and --tunnel-remote ADDR`, { hint: "each host's own address, which the other can reach" });
  const spec = tunnelSpec(at.name, o, local, remote);
  const redirect = await Redirect.source(spec, at, log);
  try {
    await ch.send(msg.redirect({ mode: spec.mode, iface: spec.iface, vni: spec.vni, table: spec.table, oldIp: spec.oldIp, sourceAddr: local, destAddr: remote, newIp: o.newIp ?? "", idleMs: o.idleMs }));
    for (;;) {
      const m = await ch.recv(60_000);
      if (m.type === MsgType.REDIRECT_READY) break;
      if (m.type === MsgType.ACK) continue;
      throw new ProtocolError(`expected REDIRECT_READY, got ${typeName(m.type)}`);
    }
  } catch (err) {
    await redirect.teardown().catch(() => undefined);
    throw err;
  }
  log.info(`redirect: ${spec.mode} tunnel ${spec.iface} ${local} -> ${remote} up at both ends`);
  return redirect;
}

/**
 * Once the VM runs at the destination: route its old address into the tunnel, and when
 * it answers at its new address, update DNS. Failures are reported, never thrown: the
 * migration is done and must not be undone by them.
 */
export async function completeRedirect(redirect: Redirect, o: RedirectOptions, log: Logger, emit: (e: Record<string, unknown>) => void): Promise<void> {
  try {
    await redirect.routeOldAddress();
    log.info(`redirect: ${o.oldIp} now goes through ${redirect.spec.iface}; open connections follow the VM`);
  } catch (err) {
    log.error(`redirect: ${(err as Error).message}; open connections to ${o.oldIp} will break. Journal: ${redirect.journal.path}`);
    emit({ event: "redirect-failed", message: (err as Error).message });
  }
  if (!o.dns || !o.newIp) return;
  const t0 = Date.now();
  if (!(await waitUntilAnswers(o.newIp, 30_000, log))) log.warn(`the VM does not answer at ${o.newIp} after 30 s; updating DNS all the same`);
  try {
    await updateDns(o.dns, o.oldIp, o.newIp, log);
    emit({ event: "dns-updated", name: o.dns.name, address: o.newIp, afterMs: Date.now() - t0, at: Date.now() });
  } catch (err) {
    log.error(`${(err as Error).message}${(err as { hint?: string }).hint ? `\n  hint: ${(err as { hint?: string }).hint}` : ""}`);
    emit({ event: "dns-failed", message: (err as Error).message });
  }
}

function isLoopback(addr: string): boolean {
  return /^127\./.test(addr) || addr === "::1" || /^::ffff:127\./i.test(addr);
}
