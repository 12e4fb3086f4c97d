// Ordered writes to a stream that takes part of a buffer at a time (socket-writer.ts),
// and corking: a batch of small answers goes out as one write, in order.
import { describe, expect, test } from "bun:test";
import { SocketWriter } from "../src/util/socket-writer.ts";

/** A stream that takes at most `room` bytes per write call until given more room. */
function stream(room = Infinity) {
  const calls: number[][] = [];
  return {
    room,
    calls,
    bytes: () => calls.flat(),
    write(b: Uint8Array): number {
      const n = Math.min(b.length, this.room);
      if (n > 0) calls.push([...b.subarray(0, n)]);
      this.room -= n;
      return n;
    },
  };
}
const bytes = (...v: number[]) => Uint8Array.from(v);

describe("SocketWriter", () => {
  test("corked, small writes go out as one write at uncork, in order; nested corks flush at the outer one", () => {
    const s = stream();
    const w = new SocketWriter(s);
    w.cork();
    w.write(bytes(1, 2));
    w.cork();
    w.write(bytes(3));
    w.uncork();
    expect(s.calls).toEqual([]);
    w.write(bytes(4));
    w.uncork();
    expect(s.calls).toEqual([[1, 2, 3, 4]]);
  });

  test("a large write while corked sends what was gathered first", () => {
    const s = stream();
    const w = new SocketWriter(s);
    w.cork();
    w.write(bytes(1));
    const big = new Uint8Array(64 * 1024).fill(7);
    w.write(big);
    w.write(bytes(2));
    w.uncork();
    expect(s.calls.map((c) => c.length)).toEqual([1, 64 * 1024, 1]);
    expect(s.bytes()[0]).toBe(1);
    expect(s.bytes().at(-1)).toBe(2);
  });

  test("a stream that takes only part keeps the rest queued, in order, behind gathered writes too", () => {
    const s = stream(3);
    const w = new SocketWriter(s);
    w.cork();
    w.write(bytes(1, 2));
    w.write(bytes(3, 4));
    w.uncork();
    expect(w.queued).toBe(1);
    w.write(bytes(5));
    s.room = Infinity;
    expect(w.drain()).toBe(true);
    expect(s.bytes()).toEqual([1, 2, 3, 4, 5]);
    expect(w.queued).toBe(0);
  });
});
