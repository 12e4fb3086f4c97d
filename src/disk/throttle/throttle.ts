// Enforcement of write throttling in the block path. While the policy asks for no delay
// and nothing is queued, a write passes straight through (synchronously). Otherwise it
// joins a FIFO queue and is applied at max(arrival + delay, previous write's turn): every
// write waits its delay, writes still overlap in time, and they reach the image in the
// order they arrived, so throttling never reorders writes. A rate cap (rate-cap.ts) paces
// them further: each write's turn also waits until the writes before it have used up
// their share of the allowance.

import { BackendDecorator, type BlockBackend, type MaybePromise } from "../block/backend.ts";
import { copyPayload, type Payload, payloadLength } from "../block/payload.ts";
import { RateCap } from "./rate-cap.ts";
import type { ThrottlePolicy } from "./throttle-policy.ts";

export class ThrottlingBackend extends BackendDecorator {
  /** Count writes only while recording: the paper throttles a migration, not a VM. */
  counting = false;
  /**
   * The VM is stopped at the source (lift()): its writes still arriving are the last ones
   * in flight, which the hypervisor drains before it hands over. They are counted, not held.
   */
  lifted = false;
  delayedWrites = 0;
  totalDelayMs = 0;
  /**
   * What the VM's pause drained: the writes held when lift() came, and every write after it
   * (the hypervisor's queue, flushed before it reports the pause). All of it crosses the
   * link before the destination can run the VM, so it is the part of the downtime the
   * in-flight bound exists to keep small.
   */
  readonly pauseDrain = { writes: 0, bytes: 0 };
  private queued = 0;
  /** Bytes of the writes held (queued, not yet applied): they reach the log, and the link, before the hand-off can. */
  private held = 0;
  private tail: Promise<unknown> = Promise.resolve();
  private lastTurn = 0;
  /** When the rate cap next lets a write through (its previous writes' share used up). */
  private capFreeAt = 0;
  /** Bumped by release(): writes queued before it wait no longer. */
  private epoch = 0;
  private released = Promise.withResolvers<void>();
  readonly cap = new RateCap();

  constructor(
    inner: BlockBackend,
    readonly policy: ThrottlePolicy,
  ) {
    super(inner);
  }

  get queueLength(): number {
    return this.queued;
  }

  get heldBytes(): number {
    return this.held;
  }

  override write(offset: number, data: Payload, fua: boolean): MaybePromise<void> {
    // The payload may be views into socket buffers: keep our own copy if we wait.
    return this.admit(
      payloadLength(data),
      () => this.inner.write(offset, data, fua),
      () => {
        const copy = copyPayload(data);
        return () => this.inner.write(offset, copy, fua);
      },
    );
  }
  override zero(offset: number, length: number, fua: boolean, mayPunch: boolean): MaybePromise<void> {
    return this.admit(0, () => this.inner.zero(offset, length, fua, mayPunch)); // a zero record carries no data
  }
  override trim(offset: number, length: number, fua: boolean): MaybePromise<void> {
    return this.admit(0, () => this.inner.trim(offset, length, fua));
  }

  /** `now` applies at once; `later` prepares an apply that is safe to run after this call. */
  private admit(bytes: number, now: () => MaybePromise<void>, later: () => () => MaybePromise<void> = () => now): MaybePromise<void> {
    if (this.counting && this.lifted) {
      this.pauseDrain.writes++;
      this.pauseDrain.bytes += bytes;
    }
    const holds = this.counting && !this.lifted;
    const delayUs = holds ? this.policy.delayUs() : 0;
    const paceMs = holds ? this.cap.paceMs(bytes) : 0;
    if (delayUs === 0 && paceMs === 0 && this.queued === 0) {
      const r = now();
      this.counted();
      return r;
    }
    return this.enqueue(later(), delayUs, paceMs, bytes);
  }

  /**
   * Lets every held write go at once, still in order: at the fence (the fence below refuses
   * them; a write to a fenced disk must not wait out a cap first, seconds at 1 MB/s) and when
   * recording ends (its delays and cap end with it).
   */
  release(): void {
    const now = performance.now();
    this.lastTurn = Math.min(this.lastTurn, now);
    this.capFreeAt = Math.min(this.capFreeAt, now);
    this.epoch++;
    this.released.resolve();
    this.released = Promise.withResolvers<void>();
  }

  /**
   * Ends holding writes until recording starts again (lifted is cleared then), and lets the
   * held ones go, in order. Throttling exists to make the delta queue converge while the VM
   * runs; once the VM is stopped, its writes in flight are bounded (the hypervisor's queue),
   * and holding them only lengthens the downtime: QEMU waits for every one before it reports
   * the pause, so under a capped Bonnie writer they drained at the cap, 11.5 s of a 14.9 s
   * downtime on the paper bench's LAN.
   */
  lift(): void {
    this.pauseDrain.writes = this.queued;
    this.pauseDrain.bytes = this.held;
    this.lifted = true;
    this.release();
  }

  private counted(): void {
    if (this.counting) this.policy.onWriteCompleted();
  }

  private enqueue(apply: () => MaybePromise<void>, delayUs: number, paceMs: number, bytes: number): Promise<void> {
    const arrival = performance.now();
    const epoch = this.epoch;
    const turn = Math.max(arrival + delayUs / 1000, this.lastTurn, paceMs > 0 ? this.capFreeAt : 0);
    this.lastTurn = turn;
    if (paceMs > 0) this.capFreeAt = turn + paceMs;
    this.queued++;
    this.held += bytes;
    if (delayUs > 0 || turn > arrival) this.delayedWrites++;
    // The queue waits for each write to be applied, not for its FUA flush.
    const applied = this.tail.then(async () => {
      // Timers may fire a little early; a delay is a promise of *at least* that long.
      for (let wait = turn - performance.now(); wait > 0 && this.epoch === epoch; wait = turn - performance.now())
        await Promise.race([Bun.sleep(Math.ceil(wait)), this.released.promise]);
      this.totalDelayMs += performance.now() - arrival;
      try {
        const result = apply();
        this.counted();
        return { result };
      } finally {
        this.queued--;
        this.held -= bytes;
      }
    });
    this.tail = applied.catch(() => undefined);
    return applied.then(({ result }) => result);
  }
}
