// The benches' link emulator (scripts/bench/lib/link-emulator.ts): IP packets between two
// namespaces, delayed by half the round trip each way, so TCP runs end to end through it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { sh } from "./helpers/serve-process.ts";

const EMULATOR = new URL("../scripts/bench/lib/link-emulator.ts", import.meta.url).pathname;
const A = `lea${process.pid}`;
const B = `leb${process.pid}`;

interface Emulator {
  p: Subprocess<"ignore", "pipe", "pipe">;
  /** What it printed so far. */
  out: { text: string };
  /** Resolves once its stdout is closed. */
  ended: Promise<void>;
}

async function start(args: string[]): Promise<Emulator> {
  const p = Bun.spawn([process.execPath, EMULATOR, A, B, ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const out = { text: "" };
  const ended = (async () => {
    for await (const chunk of p.stdout) out.text += new TextDecoder().decode(chunk);
  })();
  for (let i = 0; i < 100 && !out.text.includes("ready"); i++) await Bun.sleep(50);
  if (!out.text.includes("ready")) throw new Error(`no ready: ${await new Response(p.stderr).text()}`);
  return { p, out, ended };
}

/** Stops it; its counts, from the line it prints on the way out. */
async function stop(e: Emulator): Promise<{ aToB: { forwarded: number; lost: number } }> {
  e.p.kill("SIGTERM");
  await e.ended;
  await e.p.exited;
  return JSON.parse(e.out.text.trim().split("\n").at(-1)!);
}

/** ping's average round trip (ms), or undefined when nothing came back. */
async function pingAvg(count: number): Promise<number | undefined> {
  const p = Bun.spawn(["ip", "netns", "exec", A, "ping", "-c", String(count), "-i", "0.2", "-W", "1", "-q", "10.78.0.2"], { stdout: "pipe", stderr: "pipe" });
  const out = await new Response(p.stdout).text();
  await p.exited;
  const m = /= [\d.]+\/([\d.]+)\//.exec(out);
  return m ? Number(m[1]) : undefined;
}

describe("link emulator", () => {
  beforeAll(async () => {
    for (const ns of [A, B]) {
      await sh(["ip", "netns", "add", ns]);
      await sh(["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
  });
  afterAll(async () => {
    for (const ns of [A, B]) await sh(["ip", "netns", "del", ns], { allowFail: true });
  });

  test("a packet takes the round trip asked for, and the devices go when it stops", async () => {
    const emu = await start(["--rtt-ms", "80", "--rate-mbit", "100"]);
    const rtt = await pingAvg(5);
    const counts = await stop(emu);
    expect(rtt).toBeGreaterThanOrEqual(80);
    expect(rtt).toBeLessThan(80 + 200);
    expect(counts.aToB.forwarded).toBeGreaterThanOrEqual(5);
    const left = Bun.spawnSync(["ip", "-n", A, "link", "show", "lfn0"]);
    expect(left.exitCode).not.toBe(0);
  });

  test("--loss 1 drops every packet", async () => {
    const emu = await start(["--rtt-ms", "10", "--rate-mbit", "100", "--loss", "1"]);
    expect(await pingAvg(3)).toBeUndefined();
    const counts = await stop(emu);
    expect(counts.aToB.forwarded).toBe(0);
    expect(counts.aToB.lost).toBeGreaterThanOrEqual(3);
  });
});
