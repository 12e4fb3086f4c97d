// The undo journal of a network redirect: every change to this host's network is written
// to DIR/NAME.redirect.json *before* it is made, with the command that undoes it. Undo runs
// the list backwards and forgives "already gone", so it is safe to repeat after a crash
// (ours, or the host's); a journal left by a dead process is undone on the next start.

import { processAlive } from "../util/process.ts";
import { existsSync, readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ExitCode, WanmigError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { CommandError, quoteArgv, runCommand } from "../util/run.ts";

export interface Change {
  what: string;
  apply: string[];
  undo: string[];
}

export interface JournalFile {
  name: string;
  role: "source" | "dest";
  pid: number;
  createdAt: string;
  /** The tunnel interface (its counters tell when the redirect is idle). */
  iface?: string;
  changes: Change[];
}

export class RedirectError extends WanmigError {
  constructor(message: string, opts: { cause?: unknown; hint?: string } = {}) {
    super(message, { exitCode: ExitCode.peerFailure, ...opts });
  }
}

/** `ip` and `sysctl` saying the thing to undo is not there (any more). */
const ALREADY_GONE = /Cannot find device|No such device|No such file or directory|No such process|does not exist|Cannot assign requested address|not found/i;

export function journalPath(runDir: string, name: string): string {
  return join(runDir, `${name}.redirect.json`);
}

export function readJournal(path: string): JournalFile | undefined {
  if (!existsSync(path)) return undefined;
  try {
    return JSON.parse(readFileSync(path, "utf8")) as JournalFile;
  } catch (cause) {
    throw new RedirectError(`cannot read the redirect journal ${path}`, { cause, hint: "it lists network changes to undo; fix or remove it by hand" });
  }
}

export class Journal {
  private readonly file: JournalFile;

  constructor(
    readonly path: string,
    meta: { name: string; role: "source" | "dest" },
    private readonly log: Logger,
  ) {
    this.file = { ...meta, pid: process.pid, createdAt: new Date().toISOString(), changes: [] };
  }

  set iface(v: string) {
    this.file.iface = v;
    this.save();
  }

  get changes(): readonly Change[] {
    return this.file.changes;
  }

  /** Records the change, then makes it. A failure names the command; what was recorded stays undoable. */
  async apply(change: Change): Promise<void> {
    this.file.changes.push(change);
    this.save();
    try {
      await runCommand(change.apply, this.log);
    } catch (cause) {
      throw new RedirectError(`redirect: ${change.what} failed`, { cause, hint: `undo what was done with: wanmig redirect teardown --name ${this.file.name}` });
    }
    this.log.debug(`redirect: ${change.what}`);
  }

  /** Undoes everything, backwards. Returns the changes that could not be undone (and keeps them in the journal). */
  async undoAll(): Promise<Change[]> {
    return undoChanges(this.path, this.file, this.log);
  }

  private save(): void {
    // Written whole to a temporary file and renamed: a crash never leaves half a journal.
    writeFileSync(`${this.path}.tmp`, JSON.stringify(this.file, null, 2), { mode: 0o600 });
    renameSync(`${this.path}.tmp`, this.path);
  }
}

export async function undoChanges(path: string, file: JournalFile, log: Logger): Promise<Change[]> {
  const left: Change[] = [];
  for (const c of [...file.changes].reverse()) {
    try {
      await runCommand(c.undo, log);
    } catch (err) {
      if (err instanceof CommandError && ALREADY_GONE.test(err.stderr)) continue;
      log.error(`redirect: cannot undo "${c.what}": ${quoteArgv(c.undo)}: ${(err as Error).message}`);
      left.unshift(c);
    }
  }
  if (left.length) writeFileSync(path, JSON.stringify({ ...file, changes: left }, null, 2), { mode: 0o600 });
  else if (existsSync(path)) unlinkSync(path);
  return left;
}


/** On start: a journal whose process is gone is undone now (a crash must leave nothing behind). */
export async function recoverStaleJournal(runDir: string, name: string, log: Logger): Promise<void> {
  const path = journalPath(runDir, name);
  const file = readJournal(path);
  if (!file || (file.pid !== process.pid && processAlive(file.pid))) return;
  log.warn(`undoing the network redirect a dead process (pid ${file.pid}) left behind: ${file.changes.length} change(s)`);
  const left = await undoChanges(path, file, log);
  if (left.length) throw new RedirectError(`${left.length} network change(s) from an earlier redirect could not be undone`, { hint: `see ${path}` });
}
