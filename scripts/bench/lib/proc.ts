// The benches' processes: each spawned in a host's network namespace, its stderr and
// stdout lines kept, its peak RSS and CPU time polled; and the other processes on the
// machine that would make the figures noisy.

import type { Subprocess } from "bun";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { basename } from "node:path";
import { REPO } from "./constants.ts";

export interface Peak {
  /** CPU time (user + system) at the last poll, seconds. */
  cpuS: number;
  /** Max of VmRSS polled every 100 ms (KiB). */
  polledKiB: number;
  /** VmHWM: read at each poll and just before the kill (KiB); for a process that exits by itself, its last poll's. */
  hwmKiB: number;
}

export class Proc {
  readonly proc: Subprocess<"ignore", "pipe", "pipe">;
  stderr = "";
  stdoutLines: { t: number; line: string }[] = [];
  peak: Peak = { polledKiB: 0, hwmKiB: 0, cpuS: 0 };
  private waiters: (() => void)[] = [];

  /** `ns` "": the bench's own namespace (the link emulator, which moves its devices into the hosts'). */
  constructor(
    readonly name: string,
    ns: string,
    argv: string[],
    readonly watchRss: boolean,
  ) {
    this.proc = Bun.spawn(ns ? ["ip", "netns", "exec", ns, ...argv] : argv, { cwd: REPO, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    live.add(this);
    void this.pump(this.proc.stderr, (t) => {
      this.stderr = (this.stderr + t).slice(-256 * 1024);
    });
    let partial = "";
    void this.pump(this.proc.stdout, (t) => {
      const lines = (partial + t).split("\n");
      partial = lines.pop()!;
      for (const line of lines) if (line.trim()) this.stdoutLines.push({ t: performance.now(), line });
    });
    // (Bun's resourceUsage().maxRSS is no use here: it is the max over all our children.)
    void this.proc.exited.then(() => live.delete(this));
  }

  private async pump(stream: ReadableStream<Uint8Array>, on: (t: string) => void): Promise<void> {
    const dec = new TextDecoder();
    for await (const c of stream) {
      on(dec.decode(c, { stream: true }));
      for (const w of this.waiters.splice(0)) w();
    }
  }

  /** `ip netns exec` execs the command, so the pid polled is the command's own: checked here. */
  async checkPid(exe: string): Promise<void> {
    let path = "";
    for (let i = 0; i < 100 && this.proc.exitCode === null; i++) {
      try {
        path = readlinkSync(`/proc/${this.proc.pid}/exe`);
      } catch {
        break; // gone: it exited
      }
      if (basename(path) === exe) return;
      await Bun.sleep(20);
    }
    if (this.proc.exitCode === null) throw new Error(`pid ${this.proc.pid} of ${this.name} runs ${path}, not ${exe}`);
  }

  poll(): void {
    const st = procStatus(this.proc.pid);
    if (st) {
      this.peak.polledKiB = Math.max(this.peak.polledKiB, st.rss);
      this.peak.hwmKiB = Math.max(this.peak.hwmKiB, st.hwm);
      this.peak.cpuS = st.cpuS;
    }
  }

  async waitFor(re: RegExp, what: string, timeoutMs = 30_000): Promise<RegExpExecArray> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.stderr);
      if (m) return m;
      if (this.proc.exitCode !== null) throw new Error(`${this.name} exited ${this.proc.exitCode} before ${what}:\n${tail(this.stderr)}`);
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}:\n${tail(this.stderr)}`);
      await Promise.race([new Promise<void>((r) => this.waiters.push(r)), Bun.sleep(100)]);
    }
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      if (this.watchRss) this.poll(); // VmHWM, just before the kill
      this.proc.kill("SIGTERM");
      const t = setTimeout(() => this.proc.kill("SIGKILL"), 3000);
      await this.proc.exited;
      clearTimeout(t);
    }
  }
}

const live = new Set<Proc>();

function procStatus(pid: number): { rss: number; hwm: number; cpuS: number } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/status`, "utf8");
    const st = readFileSync(`/proc/${pid}/stat`, "utf8");
    const stat = st.slice(st.lastIndexOf(")") + 2).split(" "); // fields from 3 (state) on
    return {
      rss: Number(/VmRSS:\s+(\d+)/.exec(s)?.[1] ?? 0),
      hwm: Number(/VmHWM:\s+(\d+)/.exec(s)?.[1] ?? 0),
      cpuS: (Number(stat[11]) + Number(stat[12])) / CLK_TCK, // utime, stime
    };
  } catch {
    return undefined;
  }
}

const CLK_TCK = 100; // getconf CLK_TCK

setInterval(() => {
  for (const p of live) if (p.watchRss) p.poll();
}, 100).unref();

export function tail(s: string, lines = 15): string {
  return s.trim().split("\n").slice(-lines).join("\n");
}

/** This process and those that started it (npm run bench …). */
function ancestors(): number[] {
  const pids = [];
  for (let pid = process.pid; pid > 1; ) {
    pids.push(pid);
    try {
      const st = readFileSync(`/proc/${pid}/stat`, "utf8");
      pid = Number(st.slice(st.lastIndexOf(")") + 2).split(" ")[1]);
    } catch {
      break;
    }
  }
  return pids;
}

/**
 * Other wanmig or test processes on the machine (not ours): they share the 2 cores and make
 * the figures noisy. Those with `ownDir` (the bench's scratch directory) in their command
 * line are ours too.
 */
export function foreignProcesses(ownDir: string | undefined): string[] {
  const ours = new Set([...ancestors(), ...[...live].map((p) => p.proc.pid)]);
  const found: string[] = [];
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid) || ours.has(Number(pid))) continue;
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      const cmd = argv.join(" ").trim();
      if (ownDir && cmd.includes(ownDir)) continue; // ours (cp, cmp, …)
      if (/^(qemu-nbd|nbdcopy|nbdkit|fio)$/.test(basename(argv[0] ?? "")) || /src\/main\.ts|dist\/wanmig|bun test/.test(cmd)) found.push(`${pid} ${cmd.slice(0, 100)}`);
    } catch {}
  }
  return found;
}

/** Stops every process still running (an interrupt, the end of a bench). */
export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((p) => p.stop()));
}

/** Lines of a wanmig log worth reading: warnings and errors. */
export function notable(name: string, log: string): string[] {
  return log
    .split("\n")
    .filter((l) => /\b(warn|warning|error|fatal)\b/i.test(l))
    .slice(0, 5)
    .map((l) => `${name}: ${l.trim()}`);
}
