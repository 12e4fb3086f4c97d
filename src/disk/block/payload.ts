// A write's bytes as the block path carries them: one buffer, or the pieces they arrived
// in (views into the socket's chunks). A 1 MiB NBD write arrives in many chunks; joining
// them cost serve 27 % of its time on sequential writes, and the file, the delta log and
// the CRC all take pieces as well (writev, a chained CRC). Only what must keep the bytes
// past the request's turn (a throttled write, one held until the image is consistent)
// joins them, into a copy of its own.

export type Payload = Uint8Array | readonly Uint8Array[];

export function payloadLength(p: Payload): number {
  if (p instanceof Uint8Array) return p.length;
  let n = 0;
  for (const piece of p) n += piece.length;
  return n;
}

export function piecesOf(p: Payload): readonly Uint8Array[] {
  return p instanceof Uint8Array ? [p] : p;
}

/** Bytes [from, to) of the payload, as views (no copy). */
export function slicePayload(p: Payload, from: number, to: number): Payload {
  if (p instanceof Uint8Array) return p.subarray(from, to);
  const out: Uint8Array[] = [];
  let at = 0;
  for (const piece of p) {
    const start = Math.max(from, at);
    const end = Math.min(to, at + piece.length);
    if (start < end) out.push(piece.subarray(start - at, end - at));
    at += piece.length;
    if (at >= to) break;
  }
  return out.length === 1 ? out[0]! : out;
}

/** An owned copy, in one buffer: for a write that waits past the turn it arrived in. */
export function copyPayload(p: Payload): Uint8Array {
  if (p instanceof Uint8Array) return p.slice();
  const out = new Uint8Array(payloadLength(p));
  let at = 0;
  for (const piece of p) {
    out.set(piece, at);
    at += piece.length;
  }
  return out;
}

/** CRC-32 of the payload, continuing from `seed` (Bun.hash.crc32's chaining). */
export function crc32Payload(p: Payload, seed: number): number {
  let crc = seed;
  for (const piece of piecesOf(p)) crc = Bun.hash.crc32(piece, crc);
  return crc;
}
