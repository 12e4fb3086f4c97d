/** True when every byte is zero. Compares 8 bytes at a time; images are mostly data or mostly holes. */
export function isZero(b: Uint8Array): boolean {
  // A word view needs an 8-byte-aligned start: check the bytes before it one by one.
  const head = (8 - (b.byteOffset & 7)) & 7;
  if (b.length < head + 8) return b.every((x) => x === 0);
  for (let i = 0; i < head; i++) if (b[i] !== 0) return false;
  const words = new BigUint64Array(b.buffer, b.byteOffset + head, (b.length - head) >>> 3);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  for (let i = head + (words.length << 3); i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}
