// Xen through `xl`, shelled out as the design asks. Source: `xl migrate -p` moves memory
// and leaves the domain paused at the destination; when it returns the domain is gone
// from the source (the point of no return), and the disk's hand-off follows. If it fails,
// xl has mostly resumed the domain at the source, whose serve was never fenced; not always
// (a guest that would not suspend is left as it is), so `xl list` is asked. Destination:
// once its disk is verified, `xl unpause DOMAIN`.

import type { Logger } from "../log.ts";
import { CommandError, runCommand } from "../util/run.ts";
import { type SourceDomainState, STATE_QUERY_TIMEOUT_MS } from "./after-failed-migrate.ts";
import { HypervisorError } from "./errors.ts";
import type { DestHypervisor, SourceHypervisor } from "./types.ts";
import { MemoryMove } from "./memory-move.ts";

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
  // xl's failed_suspend: the guest did not suspend in time, and xl leaves it as it is (no resume).
  { re: /failed to suspend at sender/i, says: "xl migrate failed: the domain did not suspend at the source, and xl does not resume it then", hint: "read xl's message below" },
  { re: /Migration failed, resuming at sender|Migration failed due to problems at target/i, says: "xl migrate failed and resumed the domain at the source", hint: "read xl's message below" },
  { re: /invalid domain identifier|domain .* does not exist|cannot find domain/i, says: "no such Xen domain", hint: "check the name with: xl list" },
  { re: /ssh: |Connection refused|Could not resolve hostname|Host key verification failed/i, says: "xl could not reach the destination over ssh", hint: "check that `ssh HOST` works non-interactively (or pass --xl-ssh)" },
  { re: /Permission denied|must be run as root/i, says: "xl needs root", hint: "run wanmig as root on the Xen host" },
];

const XL_SHUTDOWN_REASONS: Record<string, string> = {
  "-": "shut down (poweroff)",
  r: "shut down for reboot",
  s: "shut down for suspend",
  c: "crashed",
  w: "shut down by its watchdog",
  S: "shut down for a soft reset",
};

/**
 * The state column of `xl list` (tools/xl/xl_info.c): six letters, each a flag or "-":
 * r running, b blocked, p paused, s shut down followed by its reason (-rscwS: poweroff,
 * reboot, suspend, crash, watchdog, soft reset), d dying. Running, blocked (running, idle)
 * and all dashes (runnable, waiting for a CPU) mean the domain runs.
 */
export function xlDomainState(listOutput: string): { flags: string; runs: boolean; means: string } | undefined {
  const flags = listOutput.match(/(?<=\s)[r-][b-][p-][s-][-rscwS?][d-](?=\s|$)/m)?.[0];
  if (!flags) return undefined;
  const [r, b, p, s, why, d] = flags;
  if (d === "d") return { flags, runs: false, means: "dying" };
  if (s === "s" || why !== "-") return { flags, runs: false, means: XL_SHUTDOWN_REASONS[why!] ?? "shut down" };
  if (p === "p") return { flags, runs: false, means: "paused" };
  return { flags, runs: true, means: r === "r" ? "running" : b === "b" ? "blocked: running, idle" : "runnable" };
}

/** Runs xl; a failure becomes a HypervisorError naming the cause, with xl's own stderr beneath. */
export async function runXl(args: string[], log: Logger, what: string, timeoutMs?: number, signal?: AbortSignal): Promise<string> {
  try {
    return (await runCommand(["xl", ...args], log, { timeoutMs, signal })).stdout;
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    if (timeoutMs && err.code === 143) throw new HypervisorError(`${what}: xl did not answer in ${timeoutMs / 1000} s`, { cause: err });
    if (err.code === null) throw new HypervisorError(`${what}: cannot run xl`, { cause: err, hint: "install xen-utils, or pick another --hypervisor" });
    const known = KNOWN_XL_ERRORS.find((k) => k.re.test(err.stderr));
    throw new HypervisorError(`${what}: ${known ? known.says : `xl exited ${err.code}`}`, { cause: err, hint: known?.hint, unsafe: known?.unsafe });
  }
}

export class XlSource implements SourceHypervisor {
  readonly kind = "xl" as const;
  readonly pointOfNoReturn = "memory-moved" as const;
  /**
   * The `xl migrate` this source started, and how to stop it. xl has no way to cancel a
   * migration; left running after we give up, it could still move the domain away.
   */
  private migration?: { move: MemoryMove; stop: AbortController };

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
    const stop = new AbortController();
    const move = new MemoryMove(runXl(args, this.log, `migrating ${this.opts.domain}`, undefined, stop.signal), this.lookHere());
    this.migration = { move, stop };
    await move.run(whileWaiting);
    return { pausedAt: performance.now() };
  }

  /** The domain's state here, from `xl list DOMAIN`. */
  private async state(): Promise<SourceDomainState> {
    const dom = this.opts.domain;
    const out = await runXl(["list", dom], this.log, `xl list ${dom}`, STATE_QUERY_TIMEOUT_MS);
    const st = xlDomainState(out);
    if (!st) throw new HypervisorError(`xl list ${dom}: no state column in its output`, { cause: new Error(out.trim()) });
    const restart = st.flags[5] === "d" ? `once it is gone from \`xl list\`, \`xl create\` of its config` : st.flags[2] === "p" && st.flags[3] !== "s" ? `\`xl unpause ${dom}\`` : `\`xl destroy ${dom}\`, then \`xl create\` of its config,`;
    return { runs: st.runs, says: `xl list: ${st.flags}, ${st.means}`, restart };
  }

  async complete(): Promise<void> {} // the destination unpauses, once its disk is verified

  private lookHere() {
    return { domain: this.opts.domain, look: "xl list", query: () => this.state(), log: this.log };
  }

  /**
   * An `xl migrate` still under way is stopped (SIGTERM) and waited for; then, unless
   * moveMemory already looked, `xl list` says whether the domain runs here. Nothing started:
   * nothing to undo.
   */
  async abort(reason?: unknown): Promise<HypervisorError | undefined> {
    const m = this.migration;
    return m?.move.settle(reason, () => m.stop.abort());
  }

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
