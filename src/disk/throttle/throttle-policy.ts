// Write throttling policy (the paper's, section 4.3): when the VM writes faster than the
// migration can ship deltas, the delta queue never drains. So the policy watches the
// queue: deltas recorded and not yet shipped (the source reports what it has shipped, or
// skipped as carried by the bulk copy). Once the queue passes a threshold, each write is
// delayed; each time the (doubled) threshold is passed again, threshold and delay double.
//
// With threshold T and delay d, the steps fall at a queue of T, 2T, 4T, 8T, ... deltas,
// with delays d, 2d, 4d, 8d, ... capped at maxDelayUs so a runaway writer slows but never
// hangs. When the link catches up and the queue shrinks, the level comes down with it.
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
  /** The highest level of this recording (the "throttle steps" of the migration's metrics). */
  maxLevel: number;
  currentDelayUs: number;
  nextThreshold: number;
  writesCounted: number;
  /** Deltas the source has shipped (or skipped) so far. */
  shipped: number;
  /** Recorded and not yet shipped: what the policy watches. */
  deltaQueue: number;
}

export interface ThrottlePolicy {
  /** Delay for the next write, in microseconds (0 = none). */
  delayUs(): number;
  /** Called once per write that reached the image while counting. */
  onWriteCompleted(): void;
  /** The source has shipped (or skipped) this many deltas of the recording so far. */
  noteShipped(count: number): void;
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
  private shipped = 0;
  private level = 0;
  private maxLevel = 0;

  constructor(params: Partial<ThrottleParams> = {}) {
    this.params = { ...paperDefaults, ...params };
  }

  delayUs(): number {
    if (!this.params.enabled || this.level === 0) return 0;
    return Math.min(this.params.delayUs * 2 ** (this.level - 1), this.params.maxDelayUs);
  }

  onWriteCompleted(): void {
    this.writes++;
    this.update();
  }

  noteShipped(count: number): void {
    this.shipped = Math.min(Math.max(this.shipped, count), this.writes);
    this.update();
  }

  reset(): void {
    this.writes = 0;
    this.shipped = 0;
    this.level = 0;
    this.maxLevel = 0;
  }

  configure(params: Partial<ThrottleParams>): void {
    this.params = { ...this.params, ...params };
    this.update(); // a changed threshold takes effect at once
  }

  /** The level is a function of the queue: steps at T, 2T, 4T, ... */
  private update(): void {
    const queue = this.writes - this.shipped;
    let level = 0;
    while (this.params.enabled && queue > this.params.threshold * 2 ** level) level++;
    this.level = level;
    this.maxLevel = Math.max(this.maxLevel, level);
  }

  state(): ThrottleState {
    return {
      ...this.params,
      level: this.level,
      currentDelayUs: this.delayUs(),
      nextThreshold: this.nextThreshold(),
      writesCounted: this.writes,
      maxLevel: this.maxLevel,
      shipped: this.shipped,
      deltaQueue: this.writes - this.shipped,
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
