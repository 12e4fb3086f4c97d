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
