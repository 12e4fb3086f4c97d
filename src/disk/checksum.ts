// SHA-256 of a whole image: the end-to-end check of a migration (source at the fence,
// destination after the last delta). Streams in 4 MiB pieces; memory stays flat.
import { closeSync, fstatSync, openSync, readSync } from "node:fs";

export function imageSha256(path: string): string {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    const h = new Bun.CryptoHasher("sha256");
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (let off = 0; off < size; ) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, size - off), off);
      if (n <= 0) throw new Error(`short read in ${path} at ${off}`);
      h.update(buf.subarray(0, n));
      off += n;
    }
    return h.digest("hex");
  } finally {
    closeSync(fd);
  }
}
