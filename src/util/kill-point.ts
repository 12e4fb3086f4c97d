// Test-only: a process that SIGKILLs itself at a named point of a migration
// (WANMIG_TEST_KILL_AT=NAME), so that tests can prove what a crash exactly there leaves
// behind. Nothing else reads the variable; unset, this is one string compare.

export function killPoint(name: string): void {
  if (process.env.WANMIG_TEST_KILL_AT !== name) return;
  process.stderr.write(`test: killed at ${name}\n`);
  process.kill(process.pid, "SIGKILL");
}

/** Lets what was just sent reach the peer before a kill point (a kill drops unsent buffers). */
export async function beforeKillPoint(name: string, ms = 300): Promise<void> {
  if (process.env.WANMIG_TEST_KILL_AT === name) await Bun.sleep(ms);
}
