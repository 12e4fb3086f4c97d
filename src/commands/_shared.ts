// Argument fragments shared by several commands, so one flag means one thing everywhere.

import type { ArgsDef } from "citty";

export const DEFAULT_RUN_DIR = "/run/wanmig";

export const nameArg = {
  name: { type: "string", description: "name of the VM's disk (the export name; sockets are DIR/NAME.nbd and DIR/NAME.ctl)", required: true, valueHint: "NAME" },
} as const satisfies ArgsDef;

export const runDirArg = {
  "run-dir": { type: "string", description: "directory of the sockets and delta logs", default: DEFAULT_RUN_DIR, valueHint: "DIR" },
} as const satisfies ArgsDef;

export const jsonArg = {
  json: { type: "boolean", description: "print JSON on stdout instead of text", default: false },
} as const satisfies ArgsDef;

export const logArg = {
  log: { type: "string", description: "log level on stderr: silent, error, warn, info, debug", valueHint: "LEVEL" },
} as const satisfies ArgsDef;

/**
 * Marks a flag that may be given several times (once per disk, in order); main.ts refuses a
 * second value of any other. citty keeps only a repeated flag's last value: read them all
 * with `valuesOf`.
 */
export const REPEATABLE = { repeatable: true } as const;

/** Every value of `--flag V` and `--flag=V` in the command line, in order. */
export function valuesOf(rawArgs: readonly string[], flag: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawArgs.length; i++) {
    const word = rawArgs[i]!;
    if (word === "--") break;
    if (word === `--${flag}` && i + 1 < rawArgs.length) out.push(rawArgs[++i]!);
    else if (word.startsWith(`--${flag}=`)) out.push(word.slice(flag.length + 3));
  }
  return out;
}
