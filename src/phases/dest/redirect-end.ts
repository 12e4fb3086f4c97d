// This host's end of the network redirect (phase 5): the tunnel the source asks for, the
// VM's old address delivered to its interface here, and the tunnel's teardown once idle.

import { UsageError, describeError } from "../../errors.ts";
import type { Logger } from "../../log.ts";
import type { Redirect as RedirectMsg } from "../../net/protocol.ts";
import { announceGateway } from "../../redirect/announce.ts";
import { Redirect } from "../../redirect/redirect.ts";
import { runCommand } from "../../util/run.ts";

/** The interface this host routes an address through (where the VM sits, by its new address). */
async function routeDevice(ip: string, log: Logger): Promise<string | undefined> {
  const out = (await runCommand(["ip", "-j", "route", "get", ip], log)).stdout;
  return (JSON.parse(out) as { dev?: string }[])[0]?.dev;
}

export class RedirectEnd {
  private redirect?: Redirect;
  private idleMs = 0;
  private vmLink?: { dev: string; ip: string };

  constructor(private readonly o: { vmDev?: string; runDir: string; name: string; log: Logger }) {}

  /** The source asked for it (a failure aborts the migration). */
  async open(m: RedirectMsg): Promise<void> {
    const { log } = this.o;
    const vmDev = this.o.vmDev ?? (m.newIp ? await routeDevice(m.newIp, log) : undefined);
    if (!vmDev) throw new UsageError("the network redirect needs the VM's interface here", "pass --vm-dev DEV to dest, or --new-ip to source");
    const spec = { mode: m.mode, iface: m.iface, local: m.destAddr, remote: m.sourceAddr, oldIp: m.oldIp, vni: m.vni, table: m.table };
    this.redirect = await Redirect.dest(spec, vmDev, { runDir: this.o.runDir, name: this.o.name }, log);
    this.idleMs = m.idleMs;
    this.vmLink = { dev: vmDev, ip: m.oldIp };
    log.info(`redirect: ${m.mode} tunnel ${m.iface} from ${m.sourceAddr} up; ${m.oldIp} is delivered to ${vmDev}, its replies go back through the tunnel`);
  }

  /** The VM runs here: the tunnel goes once no packet went through it for the source's idle time. */
  teardownWhenIdle(onTornDown: (lastPacketAt: number) => void): void {
    const r = this.redirect;
    if (!r) return;
    r.teardownWhenIdle(this.idleMs).then(
      ({ lastPacketAt }) => {
        this.o.log.info(`redirect: no packet through ${r.spec.iface} for ${this.idleMs} ms; torn down`);
        onTornDown(lastPacketAt);
      },
      (err) => this.o.log.error(describeError(err)),
    );
  }

  /** The VM runs here: its neighbours learn where its old address is now. */
  async announce(): Promise<void> {
    if (this.vmLink) await announceGateway(this.vmLink.dev, this.vmLink.ip, this.o.log).catch((err) => this.o.log.warn(`redirect: ${describeError(err)}`));
  }

  /** Whatever ends the migration early, this host's redirect end must not outlive it. */
  async undo(): Promise<void> {
    await this.redirect?.teardown().catch((err) => this.o.log.error(describeError(err)));
  }
}
