// The resend ledger on synthetic connections: what a resume sends twice is what the broken
// connection sent from the resume point on.
import { describe, expect, test } from "bun:test";
import { ResendLedger } from "../src/phases/source/resend-ledger.ts";

const MiB = 1024 * 1024;

/** A bulk copy of `chunks` 4 MiB chunks, each `wirePerChunk` bytes on the wire, noted as sendBulk does. */
function bulk(l: ResendLedger, chunks: number, wirePerChunk: number, startWire = 0): number {
  let wire = startWire;
  for (let c = 0; c < chunks; c++) {
    l.note({ bulk: c * 4 * MiB }, wire);
    wire += wirePerChunk;
  }
  return wire;
}

describe("resend ledger", () => {
  test("resumed at a chunk boundary: the chunks after it count, the ones before do not", () => {
    const l = new ResendLedger();
    const sent = bulk(l, 10, 4 * MiB); // 40 MiB sent, the destination got 32
    expect(l.resume({ bulk: 32 * MiB }, sent)).toBe(8 * MiB);
    expect(l.resent).toBe(8 * MiB);
  });

  test("resumed inside a chunk: the rest of that chunk counts, in proportion", () => {
    const l = new ResendLedger();
    const sent = bulk(l, 10, 4 * MiB);
    expect(l.resume({ bulk: 33 * MiB }, sent)).toBe(7 * MiB);
  });

  test("resumed inside the last chunk sent: what followed the point in it", () => {
    const l = new ResendLedger();
    const sent = bulk(l, 10, 4 * MiB);
    expect(l.resume({ bulk: 38 * MiB }, sent)).toBe(2 * MiB);
  });

  test("the destination got all that was sent: nothing counts", () => {
    const l = new ResendLedger();
    const sent = bulk(l, 10, 4 * MiB);
    expect(l.resume({ bulk: 40 * MiB }, sent)).toBe(0);
  });

  test("compressed chunks count their wire bytes, not their image bytes", () => {
    const l = new ResendLedger();
    const sent = bulk(l, 10, MiB); // 4:1 on the wire
    expect(l.resume({ bulk: 32 * MiB }, sent)).toBe(2 * MiB);
  });

  test("the bulk done, deltas in flight: those from the destination's next sequence on count", () => {
    const l = new ResendLedger();
    let wire = bulk(l, 4, 4 * MiB);
    for (let seq = 1n; seq <= 10n; seq++) {
      l.note({ seq }, wire);
      wire += 2 * MiB; // each delta 2 MiB: every one is a mark
    }
    expect(l.resume({ seq: 8n }, wire)).toBe(6 * MiB); // 8, 9 and 10 sent again
  });

  test("resumed in the bulk after deltas went out: the bulk's tail and every delta count", () => {
    const l = new ResendLedger();
    let wire = bulk(l, 4, 4 * MiB);
    l.note({ seq: 1n }, wire);
    wire += 4 * MiB;
    expect(l.resume({ bulk: 8 * MiB }, wire)).toBe(12 * MiB);
  });

  test("a second resume adds to the first, counted from its own connection's bytes", () => {
    const l = new ResendLedger();
    l.resume({ bulk: 32 * MiB }, bulk(l, 10, 4 * MiB));
    // The next connection starts at 32 MiB, its bytes counted from 0.
    let wire = 0;
    for (let c = 8; c < 12; c++) {
      l.note({ bulk: c * 4 * MiB }, wire);
      wire += 4 * MiB;
    }
    expect(l.resume({ bulk: 44 * MiB }, wire)).toBe(4 * MiB);
    expect(l.resent).toBe(12 * MiB);
  });

  test("a connection that never reached the resume point sent nothing twice", () => {
    const l = new ResendLedger();
    expect(l.resume({ bulk: 0 }, 2000)).toBe(0); // only handshakes: no frame of the migration
    const m = new ResendLedger();
    m.note({ seq: 5n }, 100);
    expect(m.resume({ seq: 9n }, 100)).toBe(0);
  });
});
