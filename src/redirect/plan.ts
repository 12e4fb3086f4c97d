// What a redirect changes on each host, as commands with their undo: pure functions, so
// the argv contract is tested without a network (and for ipip and gre, which this
// kernel lacks). The paper's scheme:
//
//   client ──> source host ──tunnel──> destination host ──> VM (still holding OLD)
//   client <── source host <──tunnel── destination host <── VM replies from OLD
//
// Source host: a /32 route for OLD into the tunnel. Destination host: OLD delivered to
// the VM's interface, and a policy rule (from OLD -> its own table -> the tunnel) so the
// replies go back the way the requests came. Forwarding on, reverse-path filtering off
// where packets arrive from the tunnel. VXLAN is a layer-2 tunnel: the two ends get
// link-local addresses (169.254.N.1 and .2) to route through.

import type { Change } from "./journal.ts";

export type TunnelMode = "vxlan" | "ipip" | "gre";

export interface TunnelSpec {
  mode: TunnelMode;
  /** Interface name on both hosts (at most 15 characters). */
  iface: string;
  /** This host's and the peer host's addresses (the tunnel's outer endpoints). */
  local: string;
  remote: string;
  oldIp: string;
  /** VXLAN network id; also picks the link-local /30 for the inner addresses. */
  vni: number;
  /** Policy routing table at the destination. */
  table: number;
}

export function innerAddress(spec: TunnelSpec, role: "source" | "dest"): string {
  return `169.254.${spec.vni % 250}.${role === "source" ? 1 : 2}`;
}

function sysctl(key: string, value: string, previous: string): Change {
  return { what: `sysctl ${key}=${value}`, apply: ["sysctl", "-q", "-w", `${key}=${value}`], undo: ["sysctl", "-q", "-w", `${key}=${previous}`] };
}

/** The tunnel interface itself, up, with an inner address for VXLAN. */
function tunnelLink(spec: TunnelSpec, role: "source" | "dest"): Change[] {
  const add =
    spec.mode === "vxlan"
      ? ["ip", "link", "add", spec.iface, "type", "vxlan", "id", String(spec.vni), "local", spec.local, "remote", spec.remote, "dstport", "4789"]
      : ["ip", "tunnel", "add", spec.iface, "mode", spec.mode, "local", spec.local, "remote", spec.remote];
  const out: Change[] = [{ what: `create ${spec.mode} tunnel ${spec.iface} to ${spec.remote}`, apply: add, undo: ["ip", "link", "del", spec.iface] }];
  if (spec.mode === "vxlan")
    out.push({ what: `inner address on ${spec.iface}`, apply: ["ip", "addr", "add", `${innerAddress(spec, role)}/30`, "dev", spec.iface], undo: ["ip", "addr", "del", `${innerAddress(spec, role)}/30`, "dev", spec.iface] });
  out.push({ what: `bring ${spec.iface} up`, apply: ["ip", "link", "set", spec.iface, "up"], undo: ["ip", "link", "set", spec.iface, "down"] });
  return out;
}

/** Where packets for the peer end go: via its inner address (VXLAN), or straight into the tunnel device. */
function viaPeer(spec: TunnelSpec, role: "source" | "dest"): string[] {
  return spec.mode === "vxlan" ? ["via", innerAddress(spec, role === "source" ? "dest" : "source"), "dev", spec.iface] : ["dev", spec.iface];
}

/** Step 1 at the source, before the VM pauses: the tunnel exists, nothing routed into it yet. */
export function sourceTunnel(spec: TunnelSpec, current: { ipForward: string }): Change[] {
  return [sysctl("net.ipv4.ip_forward", "1", current.ipForward), ...tunnelLink(spec, "source")];
}

/** Step 2 at the source, once the VM runs at the destination: its old address goes into the tunnel. */
export function sourceRoute(spec: TunnelSpec): Change {
  return { what: `route ${spec.oldIp} into ${spec.iface}`, apply: ["ip", "route", "replace", `${spec.oldIp}/32`, ...viaPeer(spec, "source")], undo: ["ip", "route", "del", `${spec.oldIp}/32`] };
}

/** The destination's end, set up when the source asks (before the pause): harmless until the VM arrives. */
export function destEnd(spec: TunnelSpec, vmDev: string, current: { ipForward: string; rpFilterAll: string }): Change[] {
  const pref = String(spec.table); // one rule per redirect; its preference doubles as its name
  return [
    sysctl("net.ipv4.ip_forward", "1", current.ipForward),
    // Requests arrive from the tunnel with the client's address, which this host would route
    // elsewhere: strict reverse-path filtering would drop them.
    sysctl("net.ipv4.conf.all.rp_filter", "0", current.rpFilterAll),
    ...tunnelLink(spec, "dest"),
    sysctl(`net.ipv4.conf.${spec.iface}.rp_filter`, "0", "0"),
    { what: `deliver ${spec.oldIp} to the VM on ${vmDev}`, apply: ["ip", "route", "replace", `${spec.oldIp}/32`, "dev", vmDev], undo: ["ip", "route", "del", `${spec.oldIp}/32`, "dev", vmDev] },
    {
      what: `route replies from ${spec.oldIp} back through ${spec.iface}`,
      apply: ["ip", "route", "replace", "default", ...viaPeer(spec, "dest"), "table", String(spec.table)],
      undo: ["ip", "route", "flush", "table", String(spec.table)],
    },
    {
      what: `policy rule: from ${spec.oldIp} use table ${spec.table}`,
      apply: ["ip", "rule", "add", "from", `${spec.oldIp}/32`, "lookup", String(spec.table), "pref", pref],
      undo: ["ip", "rule", "del", "pref", pref],
    },
  ];
}
