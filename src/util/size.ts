import { UsageError } from "../errors.ts";

const UNITS: Record<string, number> = { "": 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4 };

/** "512MiB", "2GB", "10G", or a plain number of bytes; returns bytes. */
export function parseSize(spec: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(spec.trim());
  const mult = UNITS[(m?.[2] ?? "").toLowerCase()];
  if (!m || mult === undefined || Number(m[1]) <= 0) throw new UsageError(`${flag} ${spec}: not a size`, "write it like 512MiB, 2GB or 10GiB");
  return Math.floor(Number(m[1]) * mult);
}
