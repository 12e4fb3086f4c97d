// Picks the driver for --hypervisor; checks its flags are there.
import { UsageError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { NoDestHypervisor, NoSourceHypervisor } from "./none.ts";
import { QemuDest, QemuSource } from "./qemu.ts";
import type { DestHypervisor, SourceHypervisor } from "./types.ts";
import { LibvirtDest, LibvirtSource } from "./libvirt.ts";
import { XlDest, XlSource } from "./xl.ts";

export interface HypervisorArgs {
  hypervisor: string;
  domain?: string;
  qmp?: string;
  "migrate-uri"?: string;
  xbzrle?: string;
  "xl-ssh"?: string;
  "xl-host"?: string;
  "xl-config"?: string;
  "libvirt-uri"?: string;
  "dest-uri"?: string;
}

function need(args: HypervisorArgs, flag: keyof HypervisorArgs): string {
  const v = args[flag];
  if (!v) throw new UsageError(`--hypervisor ${args.hypervisor} needs --${flag}`);
  return v;
}

/** `destHost`: where xl migrate sends the domain (the --to host), and libvirt's default destination. */
export function sourceHypervisor(args: HypervisorArgs, destHost: string, log: Logger): SourceHypervisor {
  switch (args.hypervisor) {
    case "none":
      return new NoSourceHypervisor();
    case "qemu":
      return new QemuSource({ qmp: need(args, "qmp"), migrateUri: need(args, "migrate-uri"), xbzrle: args.xbzrle === "auto" }, log);
    case "xl":
      return new XlSource({ domain: need(args, "domain"), host: xlHost(args, destHost), sshCommand: args["xl-ssh"], config: args["xl-config"] }, log);
    case "libvirt":
      return new LibvirtSource({ domain: need(args, "domain"), uri: args["libvirt-uri"], destUri: args["dest-uri"] ?? `qemu+ssh://${destHost}/system` }, log);
  }
  throw new UsageError(`unknown --hypervisor ${args.hypervisor}`, "use none, xl, qemu or libvirt");
}

/**
 * xl migrate's HOST: --xl-host, else the host of --to. With `--xl-ssh ""` xl runs HOST as
 * the whole transport command, and its own -p (leave the domain paused there) does not
 * reach the receiver: the command must say `migrate-receive -p` itself, or the domain
 * would run at the destination before its disk is verified.
 */
function xlHost(args: HypervisorArgs, destHost: string): string {
  const host = args["xl-host"] ?? destHost;
  if (args["xl-ssh"] === "" && !/\bmigrate-receive\b.*\s-p\b/.test(host))
    throw new UsageError(`with --xl-ssh "" the --xl-host command must run xl migrate-receive -p (it is ${JSON.stringify(host)})`, 'e.g. --xl-ssh "" --xl-host "xl migrate-receive -p": without -p the domain would run before its disk is verified');
  return host;
}

export function destHypervisor(args: HypervisorArgs, log: Logger): DestHypervisor {
  switch (args.hypervisor) {
    case "none":
      return new NoDestHypervisor();
    case "qemu":
      return new QemuDest({ qmp: need(args, "qmp") }, log);
    case "xl":
      return new XlDest({ domain: need(args, "domain") }, log);
    case "libvirt":
      return new LibvirtDest({ domain: need(args, "domain"), uri: args["libvirt-uri"] }, log);
  }
  throw new UsageError(`unknown --hypervisor ${args.hypervisor}`, "use none, xl, qemu or libvirt");
}
