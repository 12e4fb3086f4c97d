// Logs go to stderr, always: stdout belongs to results (`--json` events, status output),
// so scripts can read it without filtering. Each line carries its role, as xl's
// "migration sender:" lines do, so interleaved logs of two hosts stay readable.

import { createConsola, type ConsolaInstance } from "consola";

const levels: Record<string, number> = { silent: -999, error: 0, warn: 1, info: 3, debug: 4, trace: 5 };

function initialLevel(): number {
  const env = process.env.WANMIG_LOG?.toLowerCase();
  return env && env in levels ? levels[env]! : levels.info!;
}

export const rootLogger: ConsolaInstance = createConsola({
  level: initialLevel(),
  stdout: process.stderr,
  stderr: process.stderr,
  formatOptions: { date: true, colors: process.stderr.isTTY === true, compact: true },
});

export type Logger = ConsolaInstance;

export function logger(role: string): Logger {
  return rootLogger.withTag(role);
}

export function setLogLevel(name: string): void {
  if (name in levels) rootLogger.level = levels[name]!;
}

/**
 * From now on, log to a file instead of stderr. `dest --stdio` does this once the
 * migration is done: ssh goes away then, and a write to its dead pipe must not take
 * down the server that now holds the VM's disk.
 */
export async function redirectLogsTo(path: string, loggers: Logger[]): Promise<void> {
  const { createWriteStream } = await import("node:fs");
  const stream = createWriteStream(path, { flags: "a", mode: 0o600 });
  stream.on("error", () => undefined);
  // Each tagged logger holds its own copy of the options: change them all.
  for (const l of [rootLogger, ...loggers]) {
    l.options.stdout = stream as unknown as NodeJS.WriteStream;
    l.options.stderr = stream as unknown as NodeJS.WriteStream;
    l.options.formatOptions = { ...l.options.formatOptions, colors: false };
  }
}
