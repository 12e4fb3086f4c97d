// The pool of large buffers behind the frame decoder, the channel's frames and serve's READ
// replies (buffer-pool.ts), on synthetic sequences of takes and releases.
import { describe, expect, test } from "bun:test";
import { BufferPool } from "../src/util/buffer-pool.ts";

const KiB = 1024;
const pool = (keep = 1) => new BufferPool({ minBytes: 64 * KiB, allocBytes: 4096 * KiB, keep });

describe("BufferPool", () => {
  test("a released buffer serves the next take, whatever its size up to allocBytes: a small frame first does not leave only a small spare", () => {
    const p = pool();
    const small = p.take(64 * KiB);
    p.release(small);
    const large = p.take(4000 * KiB);
    expect(large.buffer).toBe(small.buffer);
  });

  test("a taken buffer is not handed out again until released: two messages built at once never share one", () => {
    const p = pool();
    p.release(p.take(100 * KiB));
    const a = p.take(100 * KiB);
    const b = p.take(100 * KiB);
    expect(a.buffer).not.toBe(b.buffer);
  });

  test("small requests get buffers of their own, and buffers it did not hand out (or already took back) are ignored", () => {
    const p = pool(4);
    const small = p.take(4 * KiB);
    p.release(small);
    p.release(new Uint8Array(1024 * KiB));
    const a = p.take(100 * KiB);
    p.release(a);
    p.release(a); // twice: kept once
    const b = p.take(100 * KiB);
    const c = p.take(100 * KiB);
    expect(b.buffer).toBe(a.buffer);
    expect(c.buffer).not.toBe(a.buffer);
    expect(c.buffer).not.toBe(small.buffer);
  });

  test("at most `keep` buffers are kept; past that, released ones go to the garbage collector", () => {
    const p = pool(2);
    const held = [p.take(100 * KiB), p.take(100 * KiB), p.take(100 * KiB)];
    for (const b of held) p.release(b);
    const again = [p.take(100 * KiB), p.take(100 * KiB), p.take(100 * KiB)].map((b) => b.buffer);
    expect(again.filter((ab) => held.some((h) => h.buffer === ab)).length).toBe(2);
  });

  test("a request larger than allocBytes gets a buffer of its size", () => {
    const p = pool();
    expect(p.take(8192 * KiB).length).toBe(8192 * KiB);
  });
});
