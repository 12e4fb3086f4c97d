// libvirt through `virsh`, shaped like the xl driver: libvirt owns the QEMU (and its QMP
// socket), so we ask it, as an operator's own runbook would.
//
//   source: virsh domstate DOMAIN (it must run) ... bulk, deltas ...
//           virsh migrate --live --suspend DOMAIN DEST_URI: memory moves, the domain is
//           left paused at the destination. When it returns, the domain has left the source
//           (the point of no return, as with xl) and QEMU flushed its disk writes to our
//           serve on the way out; the disk's hand-off follows (fence, last deltas, verify).
//   dest:   once every disk is verified: virsh resume DOMAIN.
// Before the point of no return, an abort cancels a migration under way with
// `virsh domjobabort DOMAIN`: libvirt then leaves the domain running at the source, whose
// serve was never fenced. A migration that failed by itself is followed by
// `virsh domstate DOMAIN --reason`: libvirt resumes the domain at the source, unless it
// could not (its QEMU died: shut off), and only a running domain makes it a safe abort.
//
// libvirt's own checks, from src/qemu/qemu_migration.c: a disk served by us is a network
// disk (<disk type='network'><source protocol='nbd'>) and counts as safe without --unsafe;
// a migration to the host it runs on (same host UUID or hostname) is refused.

import type { Logger } from "../log.ts";
import { CommandError, runCommand } from "../util/run.ts";
import { type SourceDomainState, STATE_QUERY_TIMEOUT_MS } from "./after-failed-migrate.ts";
import { HypervisorError } from "./errors.ts";
import type { DestHypervisor, RecoveryState, SourceHypervisor } from "./types.ts";
import { MemoryMove } from "./memory-move.ts";

/** virsh's words (libvirt's error texts) for failures an operator can act on, each one clear line. */
const KNOWN_VIRSH_ERRORS: { re: RegExp; says: string; hint: string }[] = [
  {
    re: /failed to connect to the hypervisor|Failed to connect socket/i,
    says: "virsh cannot reach libvirt",
    hint: "check --libvirt-uri (and that libvirtd runs), or pick another --hypervisor",
  },
  {
    re: /Attempt to migrate guest to the same host/i,
    says: "libvirt refuses to migrate a domain to the host it runs on (same host UUID or hostname)",
    hint: "--dest-uri must name another libvirt host; a cloned host needs a host_uuid of its own (libvirtd.conf)",
  },
  { re: /failed to get domain|Domain not found/i, says: "no such libvirt domain", hint: "check the name with: virsh list --all" },
  { re: /domain is not running/i, says: "the domain is not running", hint: "start it, or move its disk alone with --hypervisor none" },
  {
    re: /Unsafe migration/i,
    says: "libvirt calls this migration unsafe",
    hint: "serve every disk of the domain through wanmig (a network disk: <source protocol='nbd'>), which libvirt counts as safe",
  },
  { re: /migration job: canceled by client|operation aborted/i, says: "the migration was cancelled; the domain runs at the source", hint: "run the migration again when ready" },
  { re: /job '[^']*' (unexpectedly )?failed|migration (out )?job: unexpectedly failed/i, says: "virsh migrate failed", hint: "read libvirt's message below" },
];

/** Runs virsh against `uri`; a failure becomes a HypervisorError naming the cause, with virsh's own stderr beneath. */
export async function runVirsh(uri: string | undefined, args: string[], log: Logger, what: string, timeoutMs?: number): Promise<string> {
  try {
    return (await runCommand(["virsh", ...(uri ? ["-c", uri] : []), ...args], log, { timeoutMs })).stdout;
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    if (timeoutMs && err.code === 143) throw new HypervisorError(`${what}: virsh did not answer in ${timeoutMs / 1000} s`, { cause: err });
    if (err.code === null) throw new HypervisorError(`${what}: cannot run virsh`, { cause: err, hint: "install libvirt-clients, or pick another --hypervisor" });
    const known = KNOWN_VIRSH_ERRORS.find((k) => k.re.test(err.stderr));
    throw new HypervisorError(`${what}: ${known ? known.says : `virsh exited ${err.code}`}`, { cause: err, hint: known?.hint });
  }
}

export class LibvirtSource implements SourceHypervisor {
  readonly kind = "libvirt" as const;
  readonly pointOfNoReturn = "memory-moved" as const;
  /** The `virsh migrate` this source started. */
  private migration?: MemoryMove;

  constructor(
    private readonly opts: { domain: string; uri?: string; destUri: string },
    private readonly log: Logger,
  ) {}

  private state(): Promise<string> {
    return runVirsh(this.opts.uri, ["domstate", this.opts.domain], this.log, `checking domain ${this.opts.domain}`).then((s) => s.trim());
  }

  async prepare(): Promise<void> {
    const state = await this.state();
    if (state !== "running") throw new HypervisorError(`domain ${this.opts.domain} is ${state}, not running`, { hint: "start it, or move its disk alone with --hypervisor none" });
  }

  async moveMemory(whileWaiting: () => Promise<void>): Promise<{ pausedAt: number }> {
    this.log.info(`virsh migrates ${this.opts.domain} to ${this.opts.destUri} (left paused there)`);
    const migrate = runVirsh(this.opts.uri, ["migrate", "--live", "--suspend", this.opts.domain, this.opts.destUri], this.log, `migrating ${this.opts.domain}`);
    const move = (this.migration = new MemoryMove(migrate, this.lookHere()));
    await move.run(whileWaiting);
    return { pausedAt: performance.now() };
  }

  /** `virsh domstate DOMAIN --reason`: "running (migration canceled)", "shut off (crashed)", … */
  private async stateWithReason(): Promise<SourceDomainState> {
    const dom = this.opts.domain;
    const out = (await runVirsh(this.opts.uri, ["domstate", dom, "--reason"], this.log, `virsh domstate ${dom} --reason`, STATE_QUERY_TIMEOUT_MS)).trim();
    const state = out.replace(/\s*\(.*\)$/, "");
    const restart =
      state === "paused"
        ? `\`virsh resume ${dom}\``
        : state === "crashed"
          ? `\`virsh destroy ${dom}\`, then \`virsh start ${dom}\`,`
          : state === "pmsuspended"
            ? `\`virsh dompmwakeup ${dom}\``
            : state === "in shutdown"
              ? `once it is shut off, \`virsh start ${dom}\``
              : `\`virsh start ${dom}\``;
    return { runs: state === "running" || state === "idle", says: `virsh domstate: ${out}`, restart };
  }

  async complete(): Promise<void> {} // the destination resumes it, once every disk is verified

  private lookHere() {
    return { domain: this.opts.domain, look: "virsh list --all", query: () => this.stateWithReason(), log: this.log };
  }

  /**
   * A migration under way is cancelled (libvirt then leaves the domain running here) and
   * waited for; then, unless moveMemory already looked, `virsh domstate` says whether the
   * domain runs here. Nothing started: nothing to undo.
   */
  async abort(reason?: unknown): Promise<HypervisorError | undefined> {
    const move = this.migration;
    // Under way until virsh returns, not until we stop waiting: a Ctrl-C mid-migrate leaves
    // it running, and only domjobabort cancels it.
    return move?.settle(reason, () =>
      move.underWay
        ? runVirsh(this.opts.uri, ["domjobabort", this.opts.domain], this.log, `cancelling the migration of ${this.opts.domain}`).catch((err) =>
            this.log.warn(`virsh domjobabort: ${(err as Error).message}`),
          )
        : undefined,
    );
  }

  /** Running or paused here: it has not left. Shut off (a persistent domain's definition stays) or gone: it has. */
  async recoverState(): Promise<RecoveryState> {
    const state = await this.state().catch(() => "gone");
    return state === "running" || state === "paused" ? "can-roll-back" : "must-complete";
  }

  close(): void {}
}

export class LibvirtDest implements DestHypervisor {
  readonly kind = "libvirt" as const;
  readonly readsBeforeRelease = true; // the QEMU libvirt starts for the incoming migration

  constructor(
    private readonly opts: { domain: string; uri?: string },
    private readonly log: Logger,
  ) {}

  async release(): Promise<{ runningAt: number }> {
    await runVirsh(this.opts.uri, ["resume", this.opts.domain], this.log, `resuming ${this.opts.domain}`);
    this.log.info(`virsh resume ${this.opts.domain}: the domain runs here`);
    return { runningAt: Date.now() };
  }

  close(): void {}
}
