// A write's bytes in pieces (payload.ts): the same bytes as one buffer, however cut.
import { describe, expect, test } from "bun:test";
import { copyPayload, crc32Payload, type Payload, payloadLength, slicePayload } from "../src/disk/block/payload.ts";

const whole = crypto.getRandomValues(new Uint8Array(1000));
/** The same bytes cut at `cuts`. */
function cut(cuts: number[]): Payload {
  const bounds = [0, ...cuts, whole.length];
  return bounds.slice(1).map((end, i) => whole.subarray(bounds[i]!, end));
}

describe("Payload", () => {
  const shapes: [string, Payload][] = [
    ["one buffer", whole],
    ["two pieces", cut([500])],
    ["many, uneven", cut([1, 2, 100, 101, 640, 999])],
  ];
  for (const [name, p] of shapes) {
    test(`${name}: length, copy, CRC and every slice agree with the buffer`, () => {
      expect(payloadLength(p)).toBe(1000);
      expect(copyPayload(p)).toEqual(whole);
      expect(crc32Payload(p, 7)).toBe(Bun.hash.crc32(whole, 7));
      for (const [from, to] of [[0, 1000], [0, 1], [1, 2], [99, 102], [500, 1000], [640, 999], [999, 1000], [300, 300]])
        expect(copyPayload(slicePayload(p, from!, to!))).toEqual(whole.subarray(from, to));
    });
  }

  test("a copy is the caller's own: the pieces may change after", () => {
    const pieces = [Uint8Array.of(1, 2), Uint8Array.of(3)];
    const copy = copyPayload(pieces);
    pieces[0]![0] = 9;
    expect(copy).toEqual(Uint8Array.of(1, 2, 3));
  });
});
