#!/usr/bin/env bun
// Entry point: the command tree, and the one place where the process exits.
// citty would exit 1 for every failure; runbooks need to tell a usage error from a
// migration that aborted safely, so errors map to the documented table in errors.ts.

import { type CommandDef, defineCommand, renderUsage, runCommand } from "citty";
import { subCommands } from "./commands/index.ts";
import { describeError, ExitCode, exitCodeOf, renderExitCodeTable, UsageError } from "./errors.ts";

import { VERSION } from "./version.ts";

const main = defineCommand({
  meta: {
    name: "wanmig",
    version: VERSION,
    description: "Live migration of a VM with its local disk and open connections, over LAN or WAN",
  },
  subCommands,
});

/** The deepest command named by the leading words of argv, with its parent (for usage). */
async function resolveCommand(rawArgs: string[]): Promise<[CommandDef<any>, CommandDef<any> | undefined]> {
  let cmd: CommandDef<any> = main;
  let parent: CommandDef<any> | undefined;
  for (const word of rawArgs) {
    if (word.startsWith("-")) break;
    const subs = (typeof cmd.subCommands === "function" ? await cmd.subCommands() : await cmd.subCommands) as
      | Record<string, CommandDef<any> | (() => Promise<CommandDef<any>>)>
      | undefined;
    const next = subs?.[word];
    if (!next) break;
    parent = cmd;
    cmd = typeof next === "function" ? await next() : next;
  }
  return [cmd, parent];
}

function stripAnsi(s: string): string {
  return s.replace(/\x1b\[[0-9;]*m/g, "");
}

/**
 * citty ignores flags it does not know, and keeps the last of a flag given twice: a typo in
 * a runbook, or `serve --image A --image B` (which served B alone), must fail loudly instead.
 */
async function checkFlags(rawArgs: string[]): Promise<void> {
  const [cmd] = await resolveCommand(rawArgs);
  const defs = (typeof cmd.args === "function" ? await cmd.args() : await cmd.args) ?? {};
  /** Every spelling of a flag, to its name; and whether it takes a value. */
  const names = new Map<string, string>();
  const takesValue = new Set<string>();
  for (const [name, def] of Object.entries(defs as Record<string, { alias?: string | string[]; type?: string; repeatable?: boolean }>)) {
    names.set(name, name);
    for (const a of [def.alias ?? []].flat()) names.set(a, name);
    if (def.type === "boolean") names.set(`no-${name}`, name);
    else if (def.type !== "positional" && !def.repeatable) takesValue.add(name);
  }
  const seen = new Set<string>();
  for (const word of rawArgs) {
    if (word === "--") break;
    const m = /^--?([^=]+)/.exec(word);
    if (!m || /^-\d/.test(word)) continue;
    const name = names.get(m[1]!);
    if (name === undefined) throw new UsageError(`unknown option ${word.split("=")[0]}`);
    if (!takesValue.has(name)) continue;
    if (seen.has(name)) throw new UsageError(`--${name} given twice: it takes one value`);
    seen.add(name);
  }
}

async function run(rawArgs: string[]): Promise<number> {
  if (rawArgs.length === 1 && (rawArgs[0] === "--version" || rawArgs[0] === "-v")) {
    process.stdout.write(`wanmig ${VERSION}\n`);
    return ExitCode.ok;
  }
  if (rawArgs.length === 0 || rawArgs.includes("--help") || rawArgs.includes("-h")) {
    const [cmd, parent] = await resolveCommand(rawArgs);
    const usage = `${await renderUsage(cmd, parent)}\n\n${renderExitCodeTable()}\n`;
    process.stdout.write(process.stdout.isTTY ? usage : stripAnsi(usage));
    return rawArgs.length === 0 ? ExitCode.usage : ExitCode.ok;
  }
  try {
    await checkFlags(rawArgs);
    await runCommand(main, { rawArgs });
    return ExitCode.ok;
  } catch (err) {
    const code = exitCodeOf(err);
    process.stderr.write(`wanmig: ${describeError(err)}\n`);
    if (code === ExitCode.usage) process.stderr.write("Run `wanmig --help` or `wanmig COMMAND --help` for usage.\n");
    if (code === ExitCode.internal && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    return code;
  }
}

// Exit explicitly: a finished command may still hold sockets (a peer slow to close), and
// a runbook must not hang on them. `serve` and `dest` return only when told to stop.
process.exit(await run(process.argv.slice(2)));
