// The other host over SSH: one-shot commands (checks, the binary copy) and the long-lived
// `wanmig dest --stdio` whose pipes carry the migration. The ssh client is `ssh` with
// BatchMode (no prompt can hang a runbook), or $WANMIG_SSH; keys and ports come from the
// user's ~/.ssh/config as usual.

import { UsageError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { type Channel, pipeChannel } from "../net/channel.ts";
import { type CommandResult, quoteArgv, runCommand, spawnPiped } from "../util/run.ts";

export interface SshTarget {
  user?: string;
  host: string;
  port?: number;
}

export function parseSshUrl(url: string): SshTarget {
  const m = /^ssh:\/\/(?:([^@/]+)@)?(\[[^\]]+\]|[^:/]+)(?::(\d+))?\/?$/.exec(url);
  if (!m) throw new UsageError(`cannot parse ${JSON.stringify(url)}`, "write ssh://[USER@]HOST[:PORT]");
  return { user: m[1], host: m[2]!.replace(/^\[|\]$/g, ""), port: m[3] ? Number(m[3]) : undefined };
}

export function describeTarget(t: SshTarget): string {
  return `${t.user ? `${t.user}@` : ""}${t.host}${t.port ? `:${t.port}` : ""}`;
}

/** The ssh argv that runs `remote` (quoted for the remote shell) on the target. */
export function sshArgv(t: SshTarget, remote: string[]): string[] {
  return [
    process.env.WANMIG_SSH ?? "ssh", "-o", "BatchMode=yes", ...(t.port ? ["-p", String(t.port)] : []),
    `${t.user ? `${t.user}@` : ""}${t.host}`, "--", quoteArgv(remote),
  ];
}

/** Runs a command there to completion (through the one command runner: argv logged, stderr kept). */
export function sshRun(t: SshTarget, remote: string[], log: Logger, opts: { input?: string | Uint8Array; timeoutMs?: number } = {}): Promise<CommandResult> {
  return runCommand(sshArgv(t, remote), log, { timeoutMs: opts.timeoutMs ?? 60_000, input: opts.input });
}

/** `wanmig dest --stdio …` there, spoken to through ssh's pipes. Closing the channel ends our ssh client; the remote dest serves on. */
export function sshChannel(t: SshTarget, remote: string[], log: Logger): Channel {
  const child = spawnPiped(sshArgv(t, remote), log);
  const ch = pipeChannel(child.stdout, child.stdin);
  const close = ch.close.bind(ch);
  ch.close = () => {
    close();
    child.kill();
  };
  return ch;
}
