import { defineCommand } from "citty";
import { join } from "node:path";
import { UsageError } from "../errors.ts";
import { logger, setLogLevel } from "../log.ts";
import { parseDuration } from "../util/duration.ts";
import { type PatternName, patternNames } from "../workload/patterns.ts";
import { runWorkload } from "../workload/runner.ts";
import { jsonArg, logArg, nameArg, runDirArg } from "./_shared.ts";

export default defineCommand({
  meta: { name: "workload", description: "Write to a served disk like the paper's workloads, and measure stalls and disruption" },
  args: {
    ...nameArg,
    ...runDirArg,
    pattern: { type: "string", description: `one of ${patternNames.join(", ")}`, required: true, valueHint: "PATTERN" },
    duration: { type: "string", description: "how long to run", default: "10s", valueHint: "D" },
    "then-run-dir": { type: "string", description: "where the disk's socket appears after a migration on this host (tests, demos)", valueHint: "DIR" },
    ...jsonArg,
    ...logArg,
  },
  async run({ args }) {
    if (args.log) setLogLevel(args.log);
    if (!patternNames.includes(args.pattern as PatternName)) throw new UsageError(`unknown pattern ${args.pattern}`, `use one of ${patternNames.join(", ")}`);
    // SIGUSR1 pauses the writer as a VM pauses (nothing left in flight; with --json a
    // "paused" line says so), SIGUSR2 resumes it: a benchmark's switchover of a peer tool.
    let paused = false;
    process.on("SIGUSR1", () => (paused = true));
    process.on("SIGUSR2", () => (paused = false));
    const r = await runWorkload({
      socket: join(args["run-dir"], `${args.name}.nbd`),
      next: args["then-run-dir"] ? join(args["then-run-dir"], `${args.name}.nbd`) : undefined,
      pattern: args.pattern as PatternName,
      durationMs: parseDuration(args.duration, "--duration"),
      log: logger("workload"),
      // With --json, what was written so far, every 200 ms: a benchmark's measure of the writer.
      onProgress: args.json ? (p) => process.stdout.write(`${JSON.stringify({ event: "progress", at: Date.now(), ...p })}\n`) : undefined,
      paused: () => paused,
      onPaused: () => args.json && process.stdout.write(`${JSON.stringify({ event: "paused", at: Date.now() })}\n`),
    });
    process.stdout.write(
      args.json
        ? `${JSON.stringify({ event: "done", ...r })}\n`
        : `${r.pattern}: ${r.writes} writes (${r.bytesWritten} bytes), ${r.reads} reads in ${r.seconds.toFixed(1)} s; longest stall ${r.longestStallMs} ms; disruption ${r.disruptionMs} ms (${r.failedOps} failed ops)\n`,
    );
  },
});
