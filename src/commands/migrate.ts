import { defineCommand } from "citty";
import { ControlClient } from "../disk/service/control-client.ts";
import { controlSocketPath, type ServeStatus, servedImages } from "../disk/service/status.ts";
import { ExitCode, UsageError, WanmigError } from "../errors.ts";
import { type Logger, logger, setLogLevel } from "../log.ts";
import { type PreflightPlan, preflight } from "../remote/preflight.ts";
import { copySelf } from "../remote/self-copy.ts";
import { describeTarget, parseSshUrl, type SshTarget } from "../remote/ssh.ts";
import { InitError } from "../phases/errors.ts";
import { qmpSocketPath } from "../hypervisor/qmp.ts";
import { groupArgs, joinMoveGroup } from "./_group.ts";
import { REPEATABLE, runDirArg, valuesOf } from "./_shared.ts";
import { remoteImages as imagesThere, runSourceCommand, sourceOptionArgs } from "./source.ts";

class PreflightFailed extends WanmigError {
  constructor(n: number, sshFailed: boolean) {
    super(`${n} pre-flight check(s) failed; nothing was changed`, { exitCode: sshFailed ? ExitCode.peerFailure : ExitCode.badInput });
  }
}

/**
 * One command for the whole move over SSH: check the other host, bring this very binary
 * there if needed, start `wanmig dest --stdio` there, migrate through ssh's pipes, and
 * leave dest serving the disk there as a daemon (with a pid file).
 */
/** --remote-image (or source's spelling, --dest-image), once per disk; by default the same paths. */
function chosenRemoteImages(remote: string[], dest: string[], local: Pick<ServeStatus, "disks">): string[] {
  if (remote.length && dest.length) throw new UsageError("--remote-image and --dest-image name the same thing", "give --remote-image only");
  return remote.length ? imagesThere(remote, local, "--remote-image") : imagesThere(dest, local, "--dest-image");
}

type Say = (e: Record<string, unknown>, text: string) => void;

/**
 * The pre-flight, each check said; then, unless it is a dry run (undefined), this binary
 * copied there if needed. Throws when a check failed: nothing was changed.
 */
async function readyThere(target: SshTarget, plan: PreflightPlan, dryRun: boolean, say: Say, log: Logger): Promise<{ systemd: boolean } | undefined> {
  const { checks, needCopy, systemd } = await preflight(target, plan, log);
  for (const c of checks) say({ event: "check", ...c }, `  ${c.ok ? "ok  " : "FAIL"}  ${c.what.padEnd(13)}${c.detail}${c.fix ? `\n        -> ${c.fix}` : ""}`);
  const failed = checks.filter((c) => !c.ok);
  if (failed.length) throw new PreflightFailed(failed.length, failed.some((c) => c.what === "ssh"));
  if (dryRun) {
    say({ event: "dry-run", ready: true }, `dry run: ${plan.name} can move to ${describeTarget(target)}${needCopy ? ` (this binary would be copied to ${plan.remoteBin})` : ""}`);
    return undefined;
  }
  if (needCopy) {
    const c = await copySelf(target, plan.remoteBin, log);
    say({ event: "copied", path: plan.remoteBin, ...c }, `copied this wanmig (${(c.bytes / (1 << 20)).toFixed(1)} MiB${c.compressed ? `, ${(c.sentBytes / (1 << 20)).toFixed(1)} MiB gzip'd` : ""}) to ${describeTarget(target)}:${plan.remoteBin} in ${c.seconds.toFixed(1)} s; SHA-256 checked`);
  }
  return { systemd };
}

export default defineCommand({
  meta: { name: "migrate", description: "Migrate a VM (its disk, and with --hypervisor its memory) to another host over SSH, in one command" },
  args: {
    name: { type: "positional", description: "the VM's disk, as served here (`wanmig serve --name NAME`)", required: true, valueHint: "NAME" },
    ...runDirArg,
    to: { type: "string", description: "the other host", required: true, valueHint: "ssh://[USER@]HOST[:PORT]" },
    "remote-image": { type: "string", description: "an image path there, once per disk in serve's order (default: the same paths as here)", valueHint: "PATH", ...REPEATABLE },
    "remote-run-dir": { type: "string", description: "the run directory there (default: the same as here)", valueHint: "DIR" },
    "remote-qmp": { type: "string", description: "with --hypervisor qemu: the destination QEMU's QMP socket there", valueHint: "unix:PATH" },
    "dry-run": { type: "boolean", description: "run the pre-flight checks only", default: false },
    ...sourceOptionArgs,
    "remote-bin": { type: "string", description: "wanmig there; copied from this binary when missing or of another protocol", default: "/usr/local/bin/wanmig", valueHint: "PATH" },
  },
  async run({ args, rawArgs }) {
    if (args.log) setLogLevel(args.log);
    const log = logger("migrate");
    if (!args.to.startsWith("ssh://")) throw new UsageError("migrate goes over SSH", "write --to ssh://[USER@]HOST[:PORT]; for a waiting dest over TCP use `wanmig source`");
    const target = parseSshUrl(args.to);
    groupArgs(args);
    let local;
    try {
      local = await new ControlClient(controlSocketPath(args["run-dir"], args.name)).status();
    } catch (cause) {
      throw new InitError(`no local serve named ${args.name}`, { cause, hint: `start it with: wanmig serve --name ${args.name} --image PATH` });
    }
    const remoteImages = chosenRemoteImages(valuesOf(rawArgs, "remote-image"), valuesOf(rawArgs, "dest-image"), local);
    const remoteRunDir = args["remote-run-dir"] ?? args["run-dir"];
    const tools = args.hypervisor === "xl" ? ["xl"] : args.hypervisor === "libvirt" ? ["virsh"] : [];
    const say = (e: Record<string, unknown>, text: string) => (args.json ? process.stdout.write(`${JSON.stringify(e)}\n`) : process.stderr.write(`${text}\n`));

    if (args.hypervisor === "qemu" && (!args["remote-qmp"] || !args.qmp)) throw new UsageError("--hypervisor qemu needs --qmp (the source QEMU's) and --remote-qmp (the destination QEMU's there)");
    const qmp = args.hypervisor === "qemu" ? { local: qmpSocketPath(args.qmp!), remote: qmpSocketPath(args["remote-qmp"]!) } : undefined;
    // A hand-off a killed run left unfinished: the destination holds our copy (or serves it
    // already), so the pre-flight's "not served there" would turn us away. Settle it instead.
    if (local.handoff?.state === "unfinished") {
      log.warn(`${args.name}'s hand-off was left unfinished; settling it with ${describeTarget(target)} (no pre-flight)`);
      await runSourceCommand({ ...args, "dest-run-dir": remoteRunDir } as Parameters<typeof runSourceCommand>[0], { destImages: remoteImages });
      return;
    }
    // The group's slot covers the pre-flight too: its ssh sessions count against the other
    // host's MaxStartups like the move's own.
    const group = args["dry-run"] ? undefined : await joinMoveGroup(args, say);
    const plan = { name: args.name, localImages: servedImages(local), remoteImages, remoteRunDir, remoteBin: args["remote-bin"], tools, qmp };
    const ready = await readyThere(target, plan, args["dry-run"], say, log).catch((err: unknown) => {
      group?.progress.end("failed", (err as Error).message);
      throw err;
    });
    if (!ready) return; // a dry run
    const { systemd } = ready;
    const hvArgs =
      args.hypervisor === "xl"
        ? ["--hypervisor", "xl", "--domain", args.domain ?? ""]
        : args.hypervisor === "qemu"
          ? ["--hypervisor", "qemu", "--qmp", args["remote-qmp"] ?? ""]
          : args.hypervisor === "libvirt"
            ? ["--hypervisor", "libvirt", "--domain", args.domain ?? ""]
          : [];
    await runSourceCommand(
      { ...args, "dest-run-dir": remoteRunDir } as Parameters<typeof runSourceCommand>[0],
      {
        destImages: remoteImages,
        // dest stays there as the VM's serve, a daemon with a pid file; if this run aborts it removes what it created.
        remoteDestArgs: ["--remove-on-abort", "--pid-file", `${remoteRunDir}/${args.name}.pid`, ...hvArgs],
        // With systemd, in a transient scope of its own: it keeps ssh's pipes (the scope
        // execs it in place) and is no longer part of the ssh session logind may clean up.
        remoteWrapper: systemd ? ["systemd-run", "--scope", "--quiet", "--collect", `--unit=wanmig-dest-${args.name}-${Date.now()}`, "--"] : [],
        group,
      },
    );
  },
});
