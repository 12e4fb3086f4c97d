// The PATH shims in test/fixtures/bin (xl, virsh): stand-ins for tools whose hosts cannot
// exist here. Each logs its argv as JSON lines to $WANMIG_<TOOL>_LOG and plays the tool's
// real messages for the scenario in $WANMIG_<TOOL>_SCENARIO.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { type Hosts, hosts } from "./migration.ts";
import { REPO } from "./serve-process.ts";

const SHIM_PATH = `${join(REPO, "test", "fixtures", "bin")}:${process.env.PATH}`;

/** What the shim was asked, in order. */
export function shimCalls(log: string): { argv: string[]; t: number }[] {
  return existsSync(log) ? readFileSync(log, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)) : [];
}

/**
 * Runs `body` with the shim first on PATH and its scenario set, for every process the test
 * starts (serve, dest and source inherit our environment); restored afterwards.
 */
export async function withToolShim(tool: "xl" | "virsh", scenario: string, body: (p: { h: Hosts; log: string }) => Promise<void>): Promise<void> {
  const h = await hosts(16, 4);
  const log = join(h.a, `${tool}.log`);
  const vars = { PATH: SHIM_PATH, [`WANMIG_${tool.toUpperCase()}_LOG`]: log, [`WANMIG_${tool.toUpperCase()}_SCENARIO`]: scenario };
  const saved = { ...process.env };
  Object.assign(process.env, vars);
  try {
    await body({ h, log });
  } finally {
    for (const k of Object.keys(vars)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  }
}
