// The write-rate cap a migrating source asks for (issue 12): the convergence controller
// (src/phases/convergence.ts) holds the VM's writes to a share of what the link ships, so
// the delta queue shrinks whatever the VM does. The paper's per-write delay cannot do that:
// it slows 4 KiB and 1 MiB writes alike, so no delay fits every writer and every link.
//
// The cap is a lease: the source renews it with every report (every 50 ms), and a cap not
// renewed within LEASE_MS lapses. A source that dies, or loses its link to the serve, can
// never leave the VM throttled.

export const LEASE_MS = 2000;

export class RateCap {
  private bytesPerMs = 0;
  private until = 0;

  /** Caps writes at `bytesPerSec` for the next LEASE_MS; undefined or 0 lifts the cap. */
  set(bytesPerSec: number | undefined, now = performance.now()): void {
    this.bytesPerMs = bytesPerSec && bytesPerSec > 0 ? bytesPerSec / 1000 : 0;
    this.until = now + LEASE_MS;
  }

  clear(): void {
    this.bytesPerMs = 0;
  }

  /** The cap in force (bytes per second), if any. */
  current(now = performance.now()): number | undefined {
    return this.bytesPerMs > 0 && now <= this.until ? Math.round(this.bytesPerMs * 1000) : undefined;
  }

  /** How long a write of `bytes` occupies the allowance (ms): the gap after the previous write's turn. */
  paceMs(bytes: number, now = performance.now()): number {
    return this.bytesPerMs > 0 && now <= this.until ? bytes / this.bytesPerMs : 0;
  }
}
