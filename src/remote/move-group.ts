// Moves that share one host: `--group NAME` makes every migrate (or source) of that group
// on this host take one of `--concurrency` slots before it starts, and share `--bandwidth`
// with the others that are sending. An evacuation runs many moves at once from one host
// (Ansible starts them all); the host, not the controller, is where the cap must hold, so
// that two playbooks, or a runbook beside a playbook, still respect it.
//
// The group is one file in the run directory, DIR/groups/NAME.lock, and its state is only
// OFD byte locks on it: byte i is slot i, byte SENDING_BASE + i says slot i's move is
// sending. The kernel drops a lock when its process dies, however it dies, so a killed
// move never keeps a slot or a share of the budget.

import { closeSync, mkdirSync, openSync } from "node:fs";
import { join } from "node:path";
import { UsageError } from "../errors.ts";
import { F_WRLCK, lockByte, ofdLocksAvailable, someoneHolds, unlockByte } from "../util/ofd-lock.ts";

export const MAX_CONCURRENCY = 64;
const SENDING_BASE = 1000;
const WAIT_POLL_MS = 200;

export function parseGroupName(name: string): string {
  if (!/^[A-Za-z0-9][\w.-]{0,63}$/.test(name)) throw new UsageError(`--group ${JSON.stringify(name)} is not a group name`, "use letters, digits, '.', '_' and '-' (at most 64)");
  return name;
}

export function parseConcurrency(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1 || n > MAX_CONCURRENCY) throw new UsageError(`--concurrency ${JSON.stringify(text)} is not a number of moves`, `write a whole number from 1 to ${MAX_CONCURRENCY}`);
  return n;
}

export class MoveGroup {
  private sendingNow = false;

  private constructor(
    readonly name: string,
    readonly slot: number,
    private readonly fd: number,
  ) {}

  /**
   * Waits for a free slot (in no particular order among those waiting). `onWait` is called
   * once, when the first try finds every slot taken.
   */
  static async join(runDir: string, name: string, concurrency: number, onWait: () => void = () => {}): Promise<MoveGroup> {
    if (!ofdLocksAvailable) throw new UsageError("--group needs glibc's fcntl locks, which this host lacks");
    const dir = join(runDir, "groups");
    mkdirSync(dir, { recursive: true });
    const fd = openSync(join(dir, `${name}.lock`), "a+");
    for (let waited = false; ; waited = true) {
      for (let slot = 0; slot < concurrency; slot++) if (lockByte(fd, slot, F_WRLCK)) return new MoveGroup(name, slot, fd);
      if (!waited) onWait();
      await Bun.sleep(WAIT_POLL_MS);
    }
  }

  /** Counts this move among those sharing the budget (or no longer). */
  sending(on: boolean): void {
    if (on === this.sendingNow) return;
    if (on) lockByte(this.fd, SENDING_BASE + this.slot, F_WRLCK);
    else unlockByte(this.fd, SENDING_BASE + this.slot);
    this.sendingNow = on;
  }

  /** The group's moves sending now, this one included if it is. */
  senders(): number {
    let n = this.sendingNow ? 1 : 0;
    for (let slot = 0; slot < MAX_CONCURRENCY; slot++) if (slot !== this.slot && someoneHolds(this.fd, SENDING_BASE + slot)) n++;
    return n;
  }

  leave(): void {
    closeSync(this.fd);
  }
}
