// The lanes' scheduler and merger (src/net/lanes.ts) on synthetic lanes: frames placed by the
// scheduler come out of the merger in the order they were sent, whatever order the lanes
// deliver in; a forged NEXT and a stalled lane are caught.
import { describe, expect, test } from "bun:test";
import { RUN_BYTES, STALL_MS, stalledLane, StripeMerger, StripeScheduler } from "../src/net/lanes.ts";

type F = { seq: number } | { next: number };
const nextOf = (m: F) => ("next" in m ? m.next : undefined);

/** Lanes as queues the test fills; take() and pending() as a channel's lane has them. */
function lanes(n: number) {
  const qs: F[][] = Array.from({ length: n }, () => []);
  return { qs, inboxes: qs.map((q) => ({ take: () => q.shift(), pending: () => q.length })) };
}

/** Sends `count` frames of `bytes` through the scheduler onto `n` lanes, backlog as given. */
function send(count: number, bytes: number, n: number, queued: (lane: number) => number): F[][] {
  const s = new StripeScheduler();
  const out: F[][] = Array.from({ length: n }, () => []);
  for (let seq = 0; seq < count; seq++) {
    const { lane, from } = s.place(bytes, n, queued);
    if (from !== undefined) out[from]!.push({ next: lane });
    out[lane]!.push({ seq });
  }
  return out;
}

describe("lanes", () => {
  test("runs of at least RUN_BYTES: 4 MiB frames each a run of their own, 4 KiB ones gathered 128 to a run", () => {
    const big = send(8, 4 << 20, 4, () => 0);
    expect(big.map((l) => l.filter((f) => "seq" in f).length)).toEqual([2, 2, 2, 2]);
    const small = send(256, 4096, 4, () => 0);
    expect(small[0]!.filter((f) => "seq" in f).length).toBe(RUN_BYTES / 4096);
  });

  test("a run starts on the lane with the least backlog", () => {
    const backlog = [0, 5, 0, 9];
    const out = send(4, 4 << 20, 4, (i) => backlog[i]!);
    expect(out[1]!.length + out[3]!.length).toBe(0);
  });

  test("the merger gives the frames back in the order sent, whichever lane delivers first", () => {
    const sent = send(200, 300_000, 4, (i) => (i * 7) % 3);
    const { qs, inboxes } = lanes(4);
    const m = new StripeMerger<F>(nextOf, 4);
    const got: number[] = [];
    // Deliver lane by lane, last lane first: every frame waits for its turn.
    for (let i = 3; i >= 0; i--) {
      qs[i]!.push(...sent[i]!);
      for (let r = m.take(inboxes, 0); "frame" in r; r = m.take(inboxes, 0)) got.push((r.frame as { seq: number }).seq);
    }
    expect(got).toEqual(Array.from({ length: 200 }, (_, i) => i));
  });

  test("a NEXT naming a lane past those agreed is refused", () => {
    const { qs, inboxes } = lanes(2);
    qs[0]!.push({ next: 5 });
    expect(() => new StripeMerger<F>(nextOf, 2).take(inboxes, 0)).toThrow(/lane 5/);
  });

  test("a lane that has not joined yet is waited for, not an error", () => {
    const m = new StripeMerger<F>(nextOf, 3);
    const { qs, inboxes } = lanes(3);
    qs[0]!.push({ next: 2 });
    expect(m.take([inboxes[0], undefined, undefined], 0)).toEqual({ wait: true });
    qs[2]!.push({ seq: 1 });
    expect(m.take(inboxes, 0)).toEqual({ frame: { seq: 1 } });
  });

  test("the receiver: a lane that brings nothing while later frames wait on another is stalled after STALL_MS, not before; idle lanes are not", () => {
    const m = new StripeMerger<F>(nextOf, 2);
    const { qs, inboxes } = lanes(2);
    expect(m.take(inboxes, 0)).toEqual({ wait: true });
    expect(m.take(inboxes, 10 * STALL_MS)).toEqual({ wait: true }); // nothing anywhere: idle
    qs[1]!.push({ seq: 9 });
    expect(m.take(inboxes, 100)).toEqual({ wait: true });
    expect(m.take(inboxes, 100 + STALL_MS - 1)).toEqual({ wait: true });
    expect(m.take(inboxes, 100 + STALL_MS)).toEqual({ stalled: 0 });
  });

  test("the sender: a backlog that took no byte for STALL_MS is stalled; an empty one never", () => {
    expect(stalledLane([{ queued: 0, lastTakenAt: 0 }, { queued: 10, lastTakenAt: 1000 }], 1000 + STALL_MS - 1)).toBeUndefined();
    expect(stalledLane([{ queued: 0, lastTakenAt: 0 }, { queued: 10, lastTakenAt: 1000 }], 1000 + STALL_MS)).toBe(1);
    expect(stalledLane([{ queued: 0, lastTakenAt: 0 }], 10 * STALL_MS)).toBeUndefined();
  });
});
