// What `wanmig migrate` checks on the other host before anything moves: each problem is
// one line saying what is wrong and what to do. The checks read; the binary copy is the
// only change, and `--dry-run` skips it.

import { existsSync, statSync } from "node:fs";
import { dirname } from "node:path";
import type { Logger } from "../log.ts";
import { PROTOCOL_VERSION } from "../net/protocol.ts";
import { CommandError } from "../util/run.ts";
import { VERSION } from "../version.ts";
import { selfBinary } from "./self-copy.ts";
import { describeTarget, type SshTarget, sshRun } from "./ssh.ts";

export interface Check {
  what: string;
  ok: boolean;
  detail: string;
  /** What to do about it (failed checks). */
  fix?: string;
}

export interface PreflightPlan {
  name: string;
  /** The VM's images here and there, in disk order. */
  localImages: string[];
  remoteImages: string[];
  remoteRunDir: string;
  remoteBin: string;
  /** Local tools the hypervisor needs, and the same on the remote host. */
  tools: string[];
  /** QMP sockets that must exist: here (the source QEMU) and there (the destination QEMU). */
  qmp?: { local: string; remote: string };
}

function said(err: unknown): string {
  return err instanceof CommandError ? err.stderr.trim().split("\n").at(-1) ?? err.message : (err as Error).message;
}

/** Runs the checks; `needCopy` says the remote wanmig is missing or speaks another protocol; `systemd`: the host runs systemd. */
export async function preflight(t: SshTarget, p: PreflightPlan, log: Logger): Promise<{ checks: Check[]; needCopy: boolean; systemd: boolean }> {
  const host = describeTarget(t);
  const reach = await checkSsh(t, host, log);
  if (!reach.ok) return { checks: [reach], needCopy: false, systemd: false };
  const bin = await checkBinary(t, p, log);
  const checks = [reach, bin.check, ...(await checkSpace(t, p, log))];
  checks.push(await checkServed(t, p, host, bin.answers, log));
  for (const tool of p.tools) checks.push(await checkTool(t, tool, host, log));
  const systemd = await runsSystemd(t, log);
  checks.push({ what: "detach", ok: true, detail: systemd ? "dest will run in a systemd scope of its own (systemd-run --scope)" : "no systemd there: dest will run as a daemon with a pid file" });
  if (p.qmp) checks.push(await checkQmp(t, p.qmp, host, log));
  return { checks, needCopy: bin.needCopy, systemd };
}

async function checkSsh(t: SshTarget, host: string, log: Logger): Promise<Check> {
  try {
    await sshRun(t, ["true"], log, { timeoutMs: 20_000 });
    return { what: "ssh", ok: true, detail: `${host} reachable` };
  } catch (err) {
    return { what: "ssh", ok: false, detail: `cannot reach ${host} over ssh: ${said(err)}`, fix: "check that `ssh HOST true` works without a prompt (keys, ~/.ssh/config, $WANMIG_SSH)" };
  }
}

/** The wanmig there: `answers` when one of any protocol runs (it can say whether NAME is served); `needCopy` when this binary must replace it. */
async function checkBinary(t: SshTarget, p: PreflightPlan, log: Logger): Promise<{ check: Check; needCopy: boolean; answers: boolean }> {
  let r: { check: Check; needCopy: boolean; answers: boolean };
  try {
    const there = JSON.parse((await sshRun(t, [p.remoteBin, "version", "--json"], log)).stdout) as { version: string; protocol: number };
    r =
      there.protocol === PROTOCOL_VERSION
        ? { check: { what: "wanmig there", ok: true, detail: `${p.remoteBin}: wanmig ${there.version}, protocol ${there.protocol}` }, needCopy: false, answers: true }
        : {
            check: { what: "wanmig there", ok: true, detail: `${p.remoteBin} speaks protocol ${there.protocol} (${there.version}), this one ${PROTOCOL_VERSION} (${VERSION}): it will be replaced by this binary` },
            needCopy: true,
            answers: true,
          };
  } catch {
    r = { check: { what: "wanmig there", ok: true, detail: `no usable ${p.remoteBin} there: this binary will be copied` }, needCopy: true, answers: false };
  }
  if (r.needCopy && !selfBinary()) r.check = { ...r.check, ok: false, fix: "run the compiled wanmig (npm run build, dist/wanmig): it copies itself" };
  return r;
}

/**
 * Space: what the images take here (their allocated blocks: holes stay holes there), added up
 * per file system there (two disks on one file system need both their sizes).
 */
async function checkSpace(t: SshTarget, p: PreflightPlan, log: Logger): Promise<Check[]> {
  try {
    const out = (await sshRun(t, ["sh", "-c", 'for d in "$@"; do while [ ! -d "$d" ]; do d=$(dirname "$d"); done; df -P -B1 "$d" | tail -n 1; done', "df", ...p.remoteImages.map((i) => dirname(i))], log)).stdout;
    const rows = out.trim().split("\n").map((l) => l.trim().split(/\s+/));
    const perFs = new Map<string, { avail: number; need: number; images: string[] }>();
    p.remoteImages.forEach((image, i) => {
      const row = rows[i]!;
      const fs = perFs.get(row[5]!) ?? { avail: Number(row[3]), need: 0, images: [] };
      fs.need += statSync(p.localImages[i]!).blocks * 512;
      fs.images.push(image);
      perFs.set(row[5]!, fs);
    });
    return [...perFs.values()].map(({ avail, need, images }) => {
      const what = images.join(" + ");
      return avail >= need
        ? { what: "space", ok: true, detail: `${fmt(avail)} free for ${what} (${fmt(need)} needed)` }
        : { what: "space", ok: false, detail: `only ${fmt(avail)} free for ${what}; ${images.length > 1 ? "the images need" : "the image needs"} ${fmt(need)}`, fix: "free space there, or pick another --remote-image" };
    });
  } catch (err) {
    return [{ what: "space", ok: false, detail: `cannot measure free space there: ${said(err)}`, fix: "check --remote-image" }];
  }
}

/**
 * Whether NAME is served there: its control socket answers. Ask the wanmig there if it is
 * usable; else ask the kernel which unix sockets listen (iproute2's ss). Running a missing
 * binary fails too, and that once read as "not served".
 */
async function checkServed(t: SshTarget, p: PreflightPlan, host: string, binAnswers: boolean, log: Logger): Promise<Check> {
  const ctl = `${p.remoteRunDir}/${p.name}.ctl`;
  const served = await sshRun(t, ["sh", "-c", SERVED_SCRIPT, "served", ctl, p.remoteBin, p.name, p.remoteRunDir, binAnswers ? "ask" : ""], log).then(
    (r) => r.stdout.trim(),
    () => "unknown",
  );
  return nameCheck(served, p, host, ctl);
}

async function checkTool(t: SshTarget, tool: string, host: string, log: Logger): Promise<Check> {
  const here = !!Bun.which(tool);
  const there = await sshRun(t, ["sh", "-c", 'command -v "$1" >/dev/null', "which", tool], log).then(() => true, () => false);
  return here && there
    ? { what: tool, ok: true, detail: `${tool} on both hosts` }
    : { what: tool, ok: false, detail: `${tool} is missing ${!here && !there ? "on both hosts" : here ? `on ${host}` : "here"}`, fix: `install ${tool}` };
}

/**
 * How dest will outlive this ssh session there: in a systemd scope of its own where systemd
 * runs (logind may kill what is left in a closed session), else as a plain daemon that
 * ignores the hang-up (pid file either way).
 */
function runsSystemd(t: SshTarget, log: Logger): Promise<boolean> {
  return sshRun(t, ["sh", "-c", 'command -v systemd-run >/dev/null || exit 1; case "$(systemctl is-system-running 2>/dev/null)" in running|degraded|starting) exit 0;; *) exit 1;; esac'], log).then(
    () => true,
    () => false,
  );
}

async function checkQmp(t: SshTarget, qmp: { local: string; remote: string }, host: string, log: Logger): Promise<Check> {
  const here = existsSync(qmp.local);
  const there = await sshRun(t, ["test", "-S", qmp.remote], log).then(() => true, () => false);
  if (here && there) return { what: "qemu", ok: true, detail: `QMP sockets ${qmp.local} here and ${qmp.remote} there` };
  return {
    what: "qemu",
    ok: false,
    detail: `no QMP socket ${!here ? `${qmp.local} here` : ""}${!here && !there ? " and " : ""}${!there ? `${qmp.remote} on ${host}` : ""}`,
    fix: "start QEMU with -qmp unix:PATH,server=on,wait=off (the destination's with -incoming)",
  };
}

/**
 * Whether NAME may be received there. A server of NAME there refuses it, unless it holds the
 * very images we would receive onto and its disk moved away (fenced for good, `moved`): the
 * VM's old disk, left there by an earlier move. Then the dest there stops it and receives
 * onto its image (retire-moved.ts): the VM comes back, and only what changed travels.
 */
function nameCheck(served: string, p: PreflightPlan, host: string, ctl: string): Check {
  if (served === "free") return { what: "name", ok: true, detail: `${p.name} is not served there yet` };
  if (served === "unknown")
    return { what: "name", ok: false, detail: `cannot tell whether ${p.name} is served on ${host}: ${ctl} exists, and neither a wanmig nor ss is there to ask`, fix: `remove ${ctl} there if no server owns it, or install iproute2` };
  const st = servedStatus(served);
  const images = st?.disks?.map((d) => d.image);
  if (st?.handoff?.state === "moved" && images?.join("\n") === p.remoteImages.join("\n"))
    return { what: "name", ok: true, detail: `${p.name}'s old disk is served there, fenced since the VM moved away: that server will be stopped and ${images.join(" + ")} received onto` };
  if (st?.handoff?.state === "moved")
    return { what: "name", ok: false, detail: `${p.name}'s old disk is served on ${host} from ${images?.join(" + ")}, fenced since the VM moved away; this move would receive onto ${p.remoteImages.join(" + ")}`, fix: `pass --remote-image ${images?.join(" --remote-image ")} (only what changed travels), or stop that server there` };
  return { what: "name", ok: false, detail: `${p.name} is already served on ${host} (${ctl})`, fix: "stop it there, or migrate under another name" };
}

/** The status JSON after "served " (a wanmig there answered), if any. */
function servedStatus(served: string): { handoff?: { state?: string }; disks?: { image: string }[] } | undefined {
  try {
    return served.startsWith("served {") ? JSON.parse(served.slice("served ".length)) : undefined;
  } catch {
    return undefined;
  }
}

/** Prints free, unknown, served, or "served STATUS-JSON": $1 the control socket, $2-$4 the wanmig there, NAME and run dir, $5 "ask" if that wanmig is usable. */
const SERVED_SCRIPT = [
  'test -S "$1" || { echo free; exit 0; }',
  'if [ "$5" = ask ]; then if st=$("$2" status --name "$3" --run-dir "$4" --json 2>/dev/null); then echo "served $st"; else echo free; fi; exit 0; fi',
  'command -v ss >/dev/null 2>&1 || { echo unknown; exit 0; }',
  'if [ -n "$(ss -Hxl src "$1" 2>/dev/null)" ]; then echo served; else echo free; fi',
].join("\n");

function fmt(n: number): string {
  return n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : `${(n / (1 << 20)).toFixed(1)} MiB`;
}
