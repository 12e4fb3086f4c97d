import { defineCommand } from "citty";
import { UsageError } from "../errors.ts";
import { logger, setLogLevel } from "../log.ts";
import { journalPath, readJournal, RedirectError, undoChanges } from "../redirect/journal.ts";
import { tunnelPackets } from "../redirect/redirect.ts";
import { quoteArgv } from "../util/run.ts";
import { jsonArg, logArg, nameArg, runDirArg } from "./_shared.ts";

export default defineCommand({
  meta: { name: "redirect", description: "Show or undo a migration's network redirect on this host (its journal: DIR/NAME.redirect.json)" },
  args: {
    action: { type: "positional", description: "status | teardown", required: true, valueHint: "status|teardown" },
    ...nameArg,
    ...runDirArg,
    ...jsonArg,
    ...logArg,
  },
  async run({ args }) {
    if (args.log) setLogLevel(args.log);
    const log = logger("redirect");
    if (args.action !== "status" && args.action !== "teardown") throw new UsageError(`unknown action ${args.action}`, "use status or teardown");
    const path = journalPath(args["run-dir"], args.name);
    const j = readJournal(path);
    if (args.action === "status") {
      const packets = j?.iface ? await tunnelPackets(j.iface, log) : undefined;
      if (args.json) process.stdout.write(`${JSON.stringify({ name: args.name, active: !!j, ...j, packets })}\n`);
      else if (!j) process.stdout.write(`${args.name}: no redirect on this host\n`);
      else
        process.stdout.write(
          `${args.name}: ${j.role} end of a redirect (pid ${j.pid}, since ${j.createdAt}); tunnel ${j.iface ?? "?"}: ${packets === undefined ? "gone" : `${packets} packets`}\n` +
            j.changes.map((c) => `  ${c.what}: ${quoteArgv(c.apply)}\n`).join(""),
        );
      return;
    }
    if (!j) {
      process.stdout.write(`${args.name}: nothing to tear down\n`);
      return;
    }
    const left = await undoChanges(path, j, log);
    if (left.length) throw new RedirectError(`${left.length} change(s) could not be undone`, { hint: `see ${path}` });
    process.stdout.write(`${args.name}: redirect torn down (${j.changes.length} change(s) undone)\n`);
  },
});
