// After the move, the VM's neighbour table still holds its gateway's MAC address at the
// source. The destination's interface towards the VM carries the same gateway address but
// its own MAC, and drops frames sent to the old one. A VM that only sends (a reply it was
// computing when it paused, a stream it serves) would then send into nothing until its
// neighbour entry goes stale, tens of seconds later; meanwhile its client, which only
// waits, sends nothing that would make this host look the VM up, and the tunnel, idle,
// may be torn down. Found by the paper bench (issue 17): three clients of five hung.
//
// So once the VM runs here, this host asks for the VM's address itself: its neighbour
// entry is flushed and one datagram sent to the VM's discard port makes the kernel send an
// ARP request, from the gateway's address and this interface's MAC. A Linux guest updates
// its entry for the gateway from any ARP request that names it as sender (and replies).
// The datagram itself is dropped by the guest, or answered with an ICMP error.
import type { Logger } from "../log.ts";
import { runCommand } from "../util/run.ts";

const DISCARD_PORT = 9;

export async function announceGateway(vmDev: string, vmIp: string, log: Logger): Promise<void> {
  await runCommand(["ip", "neigh", "flush", "to", vmIp, "dev", vmDev], log);
  const sock = await Bun.udpSocket({});
  try {
    sock.send(new Uint8Array(1), DISCARD_PORT, vmIp);
  } finally {
    sock.close();
  }
  log.info(`redirect: asked for ${vmIp} on ${vmDev}, so that the VM learns this host's MAC for its gateway`);
}
