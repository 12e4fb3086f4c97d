// The source's hypervisor command (xl migrate, virsh migrate) against synthetic outcomes: the
// domain's state here is looked at exactly once however the migration ends, and never skipped.
import { describe, expect, test } from "bun:test";
import { HypervisorError } from "../src/hypervisor/errors.ts";
import { MemoryMove } from "../src/hypervisor/memory-move.ts";
import type { SourceDomainState } from "../src/hypervisor/after-failed-migrate.ts";
import { logger } from "../src/log.ts";
import { CommandError } from "../src/util/run.ts";

function here(state: SourceDomainState) {
  const looks: number[] = [];
  return {
    looks,
    look: { domain: "vm1", look: "xl list", log: logger("test"), query: async () => (looks.push(1), state) },
  };
}
const RUNS: SourceDomainState = { runs: true, says: "xl list: r-----, running", restart: "`xl unpause vm1`" };
const SHUT: SourceDomainState = { runs: false, says: "xl list: ---sr-, shut down", restart: "`xl create`" };

function commandFailure(): HypervisorError {
  return new HypervisorError("migrating vm1: xl exited 1", { cause: new CommandError(["xl", "migrate"], 1, "failed to suspend at sender") });
}

/** A command that settles when told to. */
function command() {
  let settle!: (err?: unknown) => void;
  const p = new Promise<void>((ok, fail) => (settle = (err) => (err ? fail(err) : ok())));
  return { p, settle };
}

describe("MemoryMove", () => {
  test("a command that succeeds: the rounds ran meanwhile, nothing is looked at", async () => {
    const c = command();
    const h = here(RUNS);
    const move = new MemoryMove(c.p, h.look);
    let rounds = 0;
    setTimeout(() => c.settle(), 100);
    await move.run(async () => void rounds++);
    expect(rounds).toBeGreaterThan(1);
    expect(move.underWay).toBe(false);
    expect(h.looks.length).toBe(0);
  });

  test("the command fails and the domain runs here: its error names the state (an abort, exit 5); a later abort looks no more", async () => {
    const c = command();
    const h = here(RUNS);
    const move = new MemoryMove(c.p, h.look);
    setTimeout(() => c.settle(commandFailure()), 50);
    const err = await move.run(async () => {}).catch((e) => e);
    expect(err).toBeInstanceOf(HypervisorError);
    expect((err as HypervisorError).stranded).toBe(false);
    expect((err as Error).message).toContain("runs here (xl list: r-----");
    expect(await move.settle(err, () => {})).toBeUndefined();
    expect(h.looks.length).toBe(1);
  });

  test("the command fails and the domain does not run here: stranded (exit 6)", async () => {
    const c = command();
    const h = here(SHUT);
    const move = new MemoryMove(c.p, h.look);
    setTimeout(() => c.settle(commandFailure()), 50);
    const err = await move.run(async () => {}).catch((e) => e);
    expect((err as HypervisorError).stranded).toBe(true);
    expect((err as Error).message).toContain("runs on neither host");
  });

  test("the rounds fail while the command runs: their error is thrown as it is, and the abort stops the command, waits for it, then looks", async () => {
    const c = command();
    const h = here(SHUT);
    const move = new MemoryMove(c.p, h.look);
    const linkLost = new Error("link lost");
    expect(await move.run(async () => Promise.reject(linkLost)).catch((e) => e)).toBe(linkLost);
    expect(move.underWay).toBe(true);
    let stops = 0;
    const stranded = await move.settle(linkLost, () => (stops++, setTimeout(() => c.settle(commandFailure()), 50)));
    expect(stops).toBe(1);
    expect(move.underWay).toBe(false);
    expect(stranded?.stranded).toBe(true);
    expect(stranded?.message).toContain("was given up");
    expect(h.looks.length).toBe(1);
  });

  test("the rounds fail after the command itself failed: the failure is still looked at, once, by the abort", async () => {
    const c = command();
    const h = here(SHUT);
    const move = new MemoryMove(c.p, h.look);
    const linkLost = new Error("link lost");
    const round = async () => {
      c.settle(commandFailure());
      await Bun.sleep(10); // the command has failed before this round's own failure is seen
      throw linkLost;
    };
    expect(await move.run(round).catch((e) => e)).toBe(linkLost);
    expect(h.looks.length).toBe(0);
    const stranded = await move.settle(linkLost, () => {});
    expect(stranded?.stranded).toBe(true);
    expect(await move.settle(linkLost, () => {})).toBeUndefined();
    expect(h.looks.length).toBe(1);
  });
});
