// Xen through `xl`, shelled out as the design asks. Source: `xl migrate -p` moves memory
// and leaves the domain paused at the destination; when it returns the domain is gone
// from the source (the point of no return), and the disk's hand-off follows. If it fails,
// xl has resumed the domain at the source, whose serve was never fenced. Destination:
// once its disk is verified, `xl unpause DOMAIN`.

import type { Logger } from "../log.ts";
import { CommandError, runCommand } from "../util/run.ts";
import { HypervisorError } from "./errors.ts";
import type { DestHypervisor, SourceHypervisor } from "./types.ts";
import { whileRunning } from "./while-running.ts";

/**
 * xl's own words for failures an operator can act on, each turned into one clear line.
 * The texts are xl's (tools/xl/xl_migrate.c) and Debian's xen-utils wrapper's, which
 * answers for `xl` on a host that did not boot Xen. `unsafe`: xl itself says the domain
 * may be running at both ends or neither.
 */
const KNOWN_XL_ERRORS: { re: RegExp; says: string; hint: string; unsafe?: boolean }[] = [
  {
    re: /Can't find hypervisor information in sysfs|Hypervisor is not xen|Could not obtain handle on privileged command interface|cannot init xl context/i,
    says: "no Xen hypervisor is running on this host (xl cannot reach it)",
    hint: "run wanmig on the Xen host (dom0), or pick another --hypervisor",
  },
  {
    re: /Migration failed during final handshake|Domain state is now undefined/i,
    says: "xl migrate failed in its final handshake: the domain's state is undefined",
    hint: "check both hosts (xl list) and resume at most one instance; the disk is still served (unfenced) here, and the destination holds its copy unreleased",
    unsafe: true,
  },
  { re: /Migration failed, resuming at sender|Migration failed due to problems at target|failed to suspend at sender/i, says: "xl migrate failed; the domain runs at the source again", hint: "read xl's message below" },
  { re: /invalid domain identifier|domain .* does not exist|cannot find domain/i, says: "no such Xen domain", hint: "check the name with: xl list" },
  { re: /ssh: |Connection refused|Could not resolve hostname|Host key verification failed/i, says: "xl could not reach the destination over ssh", hint: "check that `ssh HOST` works non-interactively (or pass --xl-ssh)" },
  { re: /Permission denied|must be run as root/i, says: "xl needs root", hint: "run wanmig as root on the Xen host" },
];

/** Runs xl; a failure becomes a HypervisorError naming the cause, with xl's own stderr beneath. */
export async function runXl(args: string[], log: Logger, what: string): Promise<string> {
  try {
    return (await runCommand(["xl", ...args], log)).stdout;
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    if (err.code === null) throw new HypervisorError(`${what}: cannot run xl`, { cause: err, hint: "install xen-utils, or pick another --hypervisor" });
    const known = KNOWN_XL_ERRORS.find((k) => k.re.test(err.stderr));
    throw new HypervisorError(`${what}: ${known ? known.says : `xl exited ${err.code}`}`, { cause: err, hint: known?.hint, unsafe: known?.unsafe });
  }
}

export class XlSource implements SourceHypervisor {
  readonly kind = "xl" as const;
  readonly pointOfNoReturn = "memory-moved" as const;

  constructor(
    private readonly opts: { domain: string; host: string; sshCommand?: string; config?: string },
    private readonly log: Logger,
  ) {}

  async prepare(): Promise<void> {
    await runXl(["list", this.opts.domain], this.log, `checking domain ${this.opts.domain}`);
  }

  async moveMemory(whileWaiting: () => Promise<void>): Promise<{ pausedAt: number }> {
    const args = ["migrate", "-p"];
    // "" is a command too: xl then runs HOST itself as the transport (a local receiver).
    if (this.opts.sshCommand !== undefined) args.push("-s", this.opts.sshCommand);
    if (this.opts.config) args.push("-C", this.opts.config);
    args.push(this.opts.domain, this.opts.host);
    this.log.info(`xl migrates ${this.opts.domain} to ${this.opts.host} (left paused there)`);
    await whileRunning(runXl(args, this.log, `migrating ${this.opts.domain}`), whileWaiting);
    return { pausedAt: performance.now() };
  }

  async complete(): Promise<void> {} // the destination unpauses, once its disk is verified

  /** xl migrate resumes the domain at the source when it fails; nothing is left to undo. */
  async abort(): Promise<void> {}

  /** The domain still listed here has not left (xl destroys it here only once it moved). */
  async recoverState(): Promise<"can-roll-back" | "must-complete"> {
    try {
      await runXl(["list", this.opts.domain], this.log, `looking for domain ${this.opts.domain}`);
      return "can-roll-back";
    } catch {
      return "must-complete";
    }
  }

  close(): void {}
}

export class XlDest implements DestHypervisor {
  readonly kind = "xl" as const;
  /**
   * dom0 reads the disk before the release: attaching it (nbd-client, a partition scan) and
   * xl migrate-receive setting up the paused domain's backend. The domain runs no guest code
   * until `xl unpause`, after the disk is verified, so no guest sees those reads; held, they
   * would stall the attach, and with it the migration.
   */
  readonly readsBeforeRelease = true;

  constructor(
    private readonly opts: { domain: string },
    private readonly log: Logger,
  ) {}

  async release(): Promise<{ runningAt: number }> {
    await runXl(["unpause", this.opts.domain], this.log, `unpausing ${this.opts.domain}`);
    this.log.info(`xl unpause ${this.opts.domain}: the domain runs here`);
    return { runningAt: Date.now() };
  }

  close(): void {}
}
