// Write throttling policy (the paper's, section 4.3): when the VM writes faster than the
// migration can ship deltas, the delta queue never drains. So once the writes completed
// in record mode pass a threshold, each further write is delayed; each time the (doubled)
// threshold is passed again, threshold and delay double.
//
// With threshold T and delay d, the steps fall at T, 2T, 4T, 8T, ... writes, with delays
// d, 2d, 4d, 8d, ... capped at maxDelayUs so a runaway writer slows but never hangs.
// Policy only decides *how long*; enforcement lives in throttle.ts.

export interface ThrottleParams {
  enabled: boolean;
  threshold: number;
  delayUs: number;
  maxDelayUs: number;
}

export interface ThrottleState extends ThrottleParams {
  /** 0 = no delay; each step doubles the delay. */
  level: number;
  currentDelayUs: number;
  nextThreshold: number;
  writesCounted: number;
}

export interface ThrottlePolicy {
  /** Delay for the next write, in microseconds (0 = none). */
  delayUs(): number;
  /** Called once per write that reached the image while counting. */
  onWriteCompleted(): void;
  /** Start counting afresh (record mode began or ended). */
  reset(): void;
  configure(params: Partial<ThrottleParams>): void;
  state(): ThrottleState;
}

export const paperDefaults: ThrottleParams = {
  enabled: true,
  threshold: 16384,
  delayUs: 2048,
  maxDelayUs: 1_000_000,
};

export class DoublingThrottlePolicy implements ThrottlePolicy {
  private params: ThrottleParams;
  private writes = 0;
  private level = 0;

  constructor(params: Partial<ThrottleParams> = {}) {
    this.params = { ...paperDefaults, ...params };
  }

  delayUs(): number {
    if (!this.params.enabled || this.level === 0) return 0;
    return Math.min(this.params.delayUs * 2 ** (this.level - 1), this.params.maxDelayUs);
  }

  onWriteCompleted(): void {
    this.writes++;
    if (this.params.enabled && this.writes > this.nextThreshold()) this.level++;
  }

  reset(): void {
    this.writes = 0;
    this.level = 0;
  }

  configure(params: Partial<ThrottleParams>): void {
    this.params = { ...this.params, ...params };
    // Re-derive the level so a changed threshold takes effect at once.
    this.level = 0;
    while (this.params.enabled && this.writes > this.nextThreshold()) this.level++;
  }

  state(): ThrottleState {
    return {
      ...this.params,
      level: this.level,
      currentDelayUs: this.delayUs(),
      nextThreshold: this.nextThreshold(),
      writesCounted: this.writes,
    };
  }

  private nextThreshold(): number {
    return this.params.threshold * 2 ** this.level;
  }
}

export function validateThrottleParams(p: Record<string, unknown>): Partial<ThrottleParams> {
  const out: Partial<ThrottleParams> = {};
  const num = (k: keyof ThrottleParams, min: number) => {
    const v = p[k];
    if (v === undefined) return;
    if (typeof v !== "number" || !Number.isFinite(v) || v < min) throw new Error(`${k} must be a number >= ${min}`);
    (out as Record<string, number>)[k] = Math.floor(v);
  };
  num("threshold", 1);
  num("delayUs", 0);
  num("maxDelayUs", 0);
  if (p.enabled !== undefined) {
    if (typeof p.enabled !== "boolean") throw new Error("enabled must be true or false");
    out.enabled = p.enabled;
  }
  for (const k of Object.keys(p)) if (!(k in paperDefaults)) throw new Error(`unknown throttle parameter ${k}`);
  return out;
}
