// What the fuzz tests share: their time bound and seed (a failure prints its seed;
// WANMIG_FUZZ_SEED replays it), and a small seeded generator.

export const FUZZ_MS = Number(process.env.WANMIG_FUZZ_MS) || 4000;
export const FUZZ_SEED = Number(process.env.WANMIG_FUZZ_SEED) || Date.now() % 2 ** 31;

/** mulberry32: small, seeded, so that a failing run can be replayed. */
export function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    bytes: (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(next() * 256))),
    pick: <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)]!,
  };
}

/** The counts of each case a fuzz run made, and the line that reports them. */
export function caseCounter() {
  const counts: Record<string, number> = {};
  return {
    count: (what: string) => void (counts[what] = (counts[what] ?? 0) + 1),
    total: () => Object.values(counts).reduce((a, b) => a + b, 0),
    report: () => Object.entries(counts).map(([k, v]) => `  ${v}\t${k}`).join("\n"),
  };
}
