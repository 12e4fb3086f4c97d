// Each move of a group says where it stands in a small file beside the group's lock,
// DIR/groups/NAME.d/VM.json, rewritten (atomically: a temporary name, then rename) as it
// waits, sends and ends, at most twice a second while sending. `status --group` reads them
// all (src/report/job-progress.ts). A file whose process is gone without saying it ended
// reads as "gone": a killed move.

import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { MoveEntry, MoveState } from "../report/job-progress.ts";

const WRITE_EVERY_MS = 500;

interface MoveFile extends MoveEntry {
  pid: number;
  at: number;
}

function groupDir(runDir: string, group: string): string {
  return join(runDir, "groups", `${group}.d`);
}

export class MoveProgress {
  private last = 0;
  private bytesLeft: number;
  private sent?: { at: number; bytes: number };
  private rate?: number;

  constructor(
    private readonly runDir: string,
    private readonly group: string,
    private readonly vm: string,
    /** What the move has to send at most: its images' allocated bytes. */
    private readonly allocatedBytes: number,
    private readonly budget?: number,
  ) {
    this.bytesLeft = allocatedBytes;
    mkdirSync(groupDir(runDir, group), { recursive: true });
  }

  waiting(): void {
    this.write("waiting");
  }

  /** Its turn came: under way from now on (its pre-flight included). */
  started(): void {
    this.write("sending");
  }

  /** A `--json` event of the move: its progress, then its end. */
  event(e: Record<string, unknown>): void {
    // The bulk: what is left of the image, but never more than its data not yet sent (a thin disk's holes go in no time).
    if (e.event === "progress" && e.phase === "bulk") this.bytesLeft = Math.max(0, Math.min(Number(e.size) - Number(e.offset), this.allocatedBytes - Number(e.bytesSent ?? 0)));
    else if (e.event === "progress" && e.phase === "deltas") this.bytesLeft = Number(e.queuedBytes ?? 0) + Number(e.unackedBytes ?? 0);
    else if (e.event === "done") return this.end("done");
    else return;
    this.measure(Number(e.bytesSent ?? NaN));
    if (performance.now() - this.last >= WRITE_EVERY_MS) this.write("sending");
  }

  end(state: Extract<MoveState, "done" | "failed">, error?: string): void {
    this.bytesLeft = state === "done" ? 0 : this.bytesLeft;
    this.write(state, error);
  }

  private measure(bytesSent: number): void {
    if (!Number.isFinite(bytesSent)) return;
    const now = performance.now();
    if (this.sent && now - this.sent.at >= 1000) {
      this.rate = ((bytesSent - this.sent.bytes) / (now - this.sent.at)) * 1000;
      this.sent = { at: now, bytes: bytesSent };
    } else this.sent ??= { at: now, bytes: bytesSent };
  }

  private write(state: MoveState, error?: string): void {
    this.last = performance.now();
    const file: MoveFile = { vm: this.vm, state, bytesLeft: this.bytesLeft, rate: this.rate, budget: this.budget, error, pid: process.pid, at: Date.now() };
    const path = join(groupDir(this.runDir, this.group), `${this.vm}.json`);
    try {
      writeFileSync(`${path}.tmp`, JSON.stringify(file));
      renameSync(`${path}.tmp`, path);
    } catch {
      // Progress is for the operator's eyes: a run directory that fills up must not fail a move.
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Every move the group's files tell of, in name order; a waiting or sending one whose process died reads "gone". */
export function readGroupProgress(runDir: string, group: string): MoveEntry[] {
  let names: string[];
  try {
    names = readdirSync(groupDir(runDir, group)).filter((f) => f.endsWith(".json"));
  } catch {
    return [];
  }
  const moves: MoveEntry[] = [];
  for (const n of names.sort()) {
    try {
      const f = JSON.parse(readFileSync(join(groupDir(runDir, group), n), "utf8")) as MoveFile;
      const live = f.state === "waiting" || f.state === "sending";
      moves.push({ ...f, state: live && !alive(f.pid) ? "gone" : f.state });
    } catch {
      // A file being replaced, or not ours: the next reading has it.
    }
  }
  return moves;
}
