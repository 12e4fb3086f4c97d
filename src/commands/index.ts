// Subcommands load lazily: `wanmig --version` does not pay for the NBD server.
import type { CommandDef } from "citty";

// Listed in --help in this order: the one-command path first.
export const subCommands: Record<string, () => Promise<CommandDef<any>>> = {
  migrate: () => import("./migrate.ts").then((m) => m.default as CommandDef<any>),
  serve: () => import("./serve.ts").then((m) => m.default as CommandDef<any>),
  source: () => import("./source.ts").then((m) => m.default as CommandDef<any>),
  dest: () => import("./dest.ts").then((m) => m.default as CommandDef<any>),
  workload: () => import("./workload.ts").then((m) => m.default as CommandDef<any>),
  status: () => import("./status.ts").then((m) => m.default as CommandDef<any>),
  redirect: () => import("./redirect.ts").then((m) => m.default as CommandDef<any>),
  completion: () => import("./completion.ts").then((m) => m.default as CommandDef<any>),
  version: () => import("./version.ts").then((m) => m.default as CommandDef<any>),
};
