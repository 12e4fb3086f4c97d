// Two "hosts" as network namespaces joined by a veth pair (10.<n>.0.1 and 10.<n>.0.2),
// with unique names (other namespaces may exist on the machine). Needs root.
import type { Subprocess } from "bun";
import { sh, watchStderr } from "./serve-process.ts";

export interface HostPair {
  a: { ns: string; ip: string };
  b: { ns: string; ip: string };
  /** argv prefix that runs a command inside a namespace. */
  exec(ns: string): string[];
  remove(): Promise<void>;
}

let made = 0;

export async function hostPair(): Promise<HostPair> {
  const id = `${process.pid % 10000}x${made++}`;
  const octet = 100 + ((process.pid + made) % 100);
  const a = { ns: `wmA${id}`, ip: `10.${octet}.0.1` };
  const b = { ns: `wmB${id}`, ip: `10.${octet}.0.2` };
  const va = `wva${id}`;
  const vb = `wvb${id}`;
  const run = (...argv: string[]) => sh(argv);
  await run("ip", "netns", "add", a.ns);
  await run("ip", "netns", "add", b.ns);
  const pair: HostPair = {
    a,
    b,
    exec: (ns) => ["ip", "netns", "exec", ns],
    async remove() {
      await sh(["ip", "netns", "del", a.ns], { allowFail: true });
      await sh(["ip", "netns", "del", b.ns], { allowFail: true });
    },
  };
  try {
    await run("ip", "link", "add", va, "type", "veth", "peer", "name", vb);
    await run("ip", "link", "set", va, "netns", a.ns);
    await run("ip", "link", "set", vb, "netns", b.ns);
    for (const [h, dev] of [[a, va], [b, vb]] as const) {
      await run("ip", "-n", h.ns, "addr", "add", `${h.ip}/24`, "dev", dev);
      await run("ip", "-n", h.ns, "link", "set", dev, "up");
      await run("ip", "-n", h.ns, "link", "set", "lo", "up");
    }
  } catch (err) {
    await pair.remove();
    throw err;
  }
  return pair;
}

/** A process inside a namespace, with its stdout collected and its stderr watched. `procs` collects it for cleanup. */
export function spawnInNs(ns: string, argv: string[], what: string, procs: Subprocess[]) {
  const proc = Bun.spawn(["ip", "netns", "exec", ns, ...argv], { stdin: "ignore", stdout: "pipe", stderr: "pipe" }) as Subprocess<"ignore", "pipe", "pipe">;
  procs.push(proc);
  let out = "";
  (async () => {
    for await (const c of proc.stdout) out += new TextDecoder().decode(c);
  })();
  return { proc, log: watchStderr(proc, what), out: () => out };
}

export async function waitUntil(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}
