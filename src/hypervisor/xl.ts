// Xen through `xl`, shelled out as the design asks. Source: `xl migrate -p` moves memory
// and leaves the domain paused at the destination; when it returns the domain is gone
// from the source (the point of no return), and the disk's hand-off follows. If it fails,
// xl has resumed the domain at the source, whose serve was never fenced. Destination:
// once its disk is verified, `xl unpause DOMAIN`.

import type { Logger } from "../log.ts";
import { CommandError, runCommand } from "../util/run.ts";
import { HypervisorError } from "./errors.ts";
import type { DestHypervisor, SourceHypervisor } from "./types.ts";

/** xl's own words for failures an operator can act on, turned into one clear line each. */
const KNOWN_XL_ERRORS: [RegExp, string, string][] = [
  [
    /xencall: error: Could not obtain handle|cannot init xl context|privileged command interface|\/proc\/xen|xenstore/i,
    "no Xen hypervisor is running on this host (xl cannot reach it)",
    "run wanmig on the Xen host (dom0), or pick another --hypervisor",
  ],
  [/invalid domain identifier|domain .* does not exist|cannot find domain/i, "no such Xen domain", "check the name with: xl list"],
  [/Permission denied|must be run as root/i, "xl needs root", "run wanmig as root on the Xen host"],
  [/ssh: |Connection refused|Could not resolve hostname|Host key verification failed/i, "xl could not reach the destination over ssh", "check that `ssh HOST` works non-interactively (or pass --xl-ssh)"],
  [/migration target|migration receiver|Migration failed/i, "xl migrate failed at the destination", "read xl's message below; the domain still runs here"],
];

/** Runs xl; a failure becomes a HypervisorError naming the cause, with xl's own stderr beneath. */
export async function runXl(args: string[], log: Logger, what: string): Promise<string> {
  try {
    return (await runCommand(["xl", ...args], log)).stdout;
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    const known = KNOWN_XL_ERRORS.find(([re]) => re.test(err.stderr));
    if (err.code === null) throw new HypervisorError(`${what}: cannot run xl`, { cause: err, hint: "install xen-utils, or pick another --hypervisor" });
    throw new HypervisorError(`${what}: ${known ? known[1] : `xl exited ${err.code}`}`, { cause: err, hint: known?.[2] });
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
    if (this.opts.sshCommand) args.push("-s", this.opts.sshCommand);
    if (this.opts.config) args.push("-C", this.opts.config);
    args.push(this.opts.domain, this.opts.host);
    this.log.info(`xl migrates ${this.opts.domain} to ${this.opts.host} (left paused there)`);
    let finished = false;
    const migrating = runXl(args, this.log, `migrating ${this.opts.domain}`).finally(() => (finished = true));
    migrating.catch(() => undefined); // observed below; this keeps an early failure from going unhandled
    while (!finished) {
      await whileWaiting();
      await Bun.sleep(20);
    }
    await migrating;
    return { pausedAt: performance.now() };
  }

  async complete(): Promise<void> {} // the destination unpauses, once its disk is verified

  /** xl migrate resumes the domain at the source when it fails; nothing is left to undo. */
  async abort(): Promise<void> {}

  close(): void {}
}

export class XlDest implements DestHypervisor {
  readonly kind = "xl" as const;

  constructor(
    private readonly opts: { domain: string },
    private readonly log: Logger,
  ) {}

  async release(): Promise<void> {
    await runXl(["unpause", this.opts.domain], this.log, `unpausing ${this.opts.domain}`);
    this.log.info(`xl unpause ${this.opts.domain}: the domain runs here`);
  }

  close(): void {}
}
