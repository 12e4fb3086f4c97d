// Test-only hooks at named points of a migration, so that tests can prove what happens
// exactly there. Nothing else reads these variables; unset, each is one string compare.
//   WANMIG_TEST_KILL_AT=NAME        the process SIGKILLs itself at NAME (what a crash leaves)
//   WANMIG_TEST_HOLD_AT=NAME:PATH   the process waits at NAME until PATH exists (a state
//                                   that would last microseconds, held for a test to inspect)
import { existsSync } from "node:fs";

export function killPoint(name: string): void {
  if (process.env.WANMIG_TEST_KILL_AT !== name) return;
  process.stderr.write(`test: killed at ${name}\n`);
  process.kill(process.pid, "SIGKILL");
}

/** Lets what was just sent reach the peer before a kill point (a kill drops unsent buffers). */
export async function beforeKillPoint(name: string, ms = 300): Promise<void> {
  if (process.env.WANMIG_TEST_KILL_AT === name) await Bun.sleep(ms);
}

export async function holdPoint(name: string): Promise<void> {
  const spec = process.env.WANMIG_TEST_HOLD_AT;
  if (!spec?.startsWith(`${name}:`)) return;
  const release = spec.slice(name.length + 1);
  while (!existsSync(release)) await Bun.sleep(20);
}
