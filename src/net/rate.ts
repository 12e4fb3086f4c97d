// Bandwidth cap for the migration stream (--bandwidth), so a migration can share a WAN
// link with the VM's own traffic. A token bucket with a quarter second of burst: the average rate is
// exact over any second, and the stream never bursts far past the cap.

import { UsageError } from "../errors.ts";

const UNITS: Record<string, number> = {
  bit: 1 / 8, kbit: 1e3 / 8, mbit: 1e6 / 8, gbit: 1e9 / 8,
  b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9,
  kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3,
};

/** "5mbit", "100mbit", "1gbit" (bits, as tc writes them), "10MB", "8MiB" (bytes), per second. */
export function parseRate(spec: string, flag?: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]+)?(?:\/s)?$/i.exec(spec.trim());
  const unit = (m?.[2] ?? "b").toLowerCase();
  const mult = UNITS[unit];
  if (!m || mult === undefined || Number(m[1]) <= 0)
    throw new UsageError(flag ? `cannot read ${flag} ${JSON.stringify(spec)} as a rate` : `cannot read rate ${JSON.stringify(spec)}`, "write it like 5mbit, 100mbit, 1gbit (bits/s) or 10MB, 8MiB (bytes/s)");
  return Number(m[1]) * mult;
}

export class TokenBucket {
  private tokens: number;
  private last = performance.now();
  private burst: number;

  constructor(private rate: number) {
    this.burst = burstOf(rate);
    this.tokens = this.burst;
  }

  get bytesPerSec(): number {
    return this.rate;
  }

  /** A new rate from now on (a group's share as moves start and end); what was earned so far stays. */
  setRate(bytesPerSec: number): void {
    if (bytesPerSec === this.rate) return;
    this.refill();
    this.rate = bytesPerSec;
    this.burst = burstOf(bytesPerSec);
    this.tokens = Math.min(this.tokens, this.burst);
  }

  /** Resolves when `bytes` may be sent. */
  async take(bytes: number): Promise<void> {
    this.refill();
    this.tokens -= bytes;
    if (this.tokens >= 0) return;
    // In debt: wait until the debt is paid back at the configured rate.
    await Bun.sleep(Math.ceil((-this.tokens / this.rate) * 1000));
    this.refill();
  }

  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
  }
}

/**
 * A quarter second: a sender compressing a unit (170 ms for 1 MiB at zstd 19) leaves the
 * link idle unless the tokens it earns meanwhile can be spent at once after.
 */
function burstOf(bytesPerSec: number): number {
  return Math.max(64 * 1024, bytesPerSec / 4);
}
