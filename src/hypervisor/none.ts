// Storage only: no memory to move. The point of no return is the hand-off's barrier, just
// after the fence (handoff.ts): before it, a failure unfences the disk here (abortLive).
import type { DestHypervisor, SourceHypervisor } from "./types.ts";

export class NoSourceHypervisor implements SourceHypervisor {
  readonly kind = "none" as const;
  readonly pointOfNoReturn = "fence" as const;
  async prepare(): Promise<void> {}
  async moveMemory(): Promise<{ pausedAt: number }> {
    return { pausedAt: performance.now() };
  }
  async complete(): Promise<void> {}
  async abort(): Promise<undefined> {
    return undefined;
  }
  /** Nothing to ask: whatever uses the disk waits behind the fence either way. */
  async recoverState(): Promise<"can-roll-back"> {
    return "can-roll-back";
  }
  close(): void {}
}

export class NoDestHypervisor implements DestHypervisor {
  readonly kind = "none" as const;
  readonly readsBeforeRelease = false;
  async release(): Promise<{ runningAt: number }> {
    return { runningAt: Date.now() };
  }
  close(): void {}
}
