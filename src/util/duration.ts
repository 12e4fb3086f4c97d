import { UsageError } from "../errors.ts";

/** "500us", "500ms", "10s", "2m", "1h", or a plain number of seconds; returns milliseconds. */
export function parseDuration(spec: string, flag?: string): number {
  const m = /^(\d+(?:\.\d+)?)(us|ms|s|m|h)?$/.exec(spec.trim());
  if (!m) throw new UsageError(flag ? `cannot read ${flag} ${JSON.stringify(spec)} as a duration` : `cannot read duration ${JSON.stringify(spec)}`, "write it like 500ms, 10s, 2m");
  const mult = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? "s") as "us" | "ms" | "s" | "m" | "h"];
  return Number(m[1]) * mult;
}
