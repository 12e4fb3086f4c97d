// Write patterns after the paper's workloads (section 5): what a VM does to its disk.
//   static-web   a web server with static pages: reads, and log lines appended now and then
//   dynamic-web  a web application: bursts of small random database writes, plus the log
//   video        streaming: long sequential reads, rare small writes
//   diabolical   Bonnie-like: large sequential writes as fast as the disk takes them
//   random-4k    a database's worst: 4 KiB writes at random offsets, as fast as they go
//   commit-4k    a database committing: 4 KiB writes at random offsets one at a time, a
//                flush after every 64 (issue 33's case 1: many small records, each cheap
//                to send and dear to apply)

export type Op = { kind: "read" | "write"; offset: number; length: number } | { kind: "pause"; ms: number } | { kind: "flush" };
export type PatternName = "static-web" | "dynamic-web" | "video" | "diabolical" | "random-4k" | "commit-4k";
export const patternNames: PatternName[] = ["static-web", "dynamic-web", "video", "diabolical", "random-4k", "commit-4k"];

const KiB = 1024;
const MiB = 1024 * 1024;

function randomAligned(limit: number, length: number, align = 4 * KiB): number {
  return Math.floor(Math.random() * Math.max(1, Math.floor((limit - length) / align))) * align;
}

/** An endless stream of operations for a disk of `size` bytes. */
export function* pattern(name: PatternName, size: number): Generator<Op> {
  const logStart = Math.floor((size * 3) / 4 / MiB) * MiB;
  let logAt = logStart;
  const appendLog = (): Op => {
    const op: Op = { kind: "write", offset: logAt, length: 4 * KiB };
    logAt = logAt + 4 * KiB >= size ? logStart : logAt + 4 * KiB;
    return op;
  };
  let seq = 0;
  for (;;) {
    switch (name) {
      case "static-web":
        yield { kind: "read", offset: randomAligned(logStart, 64 * KiB), length: 64 * KiB };
        yield appendLog();
        yield { kind: "pause", ms: 100 };
        break;
      case "dynamic-web":
        for (let i = 0; i < 8; i++) {
          const length = (1 + Math.floor(Math.random() * 4)) * 4 * KiB;
          yield { kind: "write", offset: randomAligned(size / 2, length), length };
        }
        yield appendLog();
        yield { kind: "pause", ms: 50 };
        break;
      case "video":
        yield { kind: "read", offset: seq, length: 256 * KiB };
        seq = seq + 256 * KiB + 256 * KiB > logStart ? 0 : seq + 256 * KiB;
        if (Math.random() < 0.02) yield appendLog();
        yield { kind: "pause", ms: 20 };
        break;
      case "diabolical":
        yield { kind: "write", offset: seq, length: MiB };
        seq = seq + 2 * MiB > size ? 0 : seq + MiB;
        break;
      case "random-4k":
        yield { kind: "write", offset: randomAligned(size, 4 * KiB), length: 4 * KiB };
        break;
      case "commit-4k":
        for (let i = 0; i < 64; i++) yield { kind: "write", offset: randomAligned(size, 4 * KiB), length: 4 * KiB };
        yield { kind: "flush" };
        break;
    }
  }
}
