// NBD server benchmark: the same image served by `wanmig serve` (plain and in record
// mode), `qemu-nbd` and `nbdkit file`, each measured by the same client (fio's nbd engine)
// in one run. Figures are ratios to qemu-nbd; absolute numbers depend on the machine. The
// rand read 4k qd1 row reports completion latency (p50/p99): one request at a time.
//
//   npm run bench -- nbd [--size-mib 1024] [--runtime 5] [--repeat 1] [--json FILE] [--baseline BIN]
//
// --baseline BIN adds rows for another wanmig binary (an earlier build, say), plain and in
// record mode, so that a change to the write path is measured side by side in one run.

import { $, type Subprocess } from "bun";
import { existsSync, mkdtempSync, readFileSync, rmSync, readdirSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ControlClient } from "../../src/disk/service/control-client.ts";
import { REPO } from "./lib/constants.ts";

interface Row {
  name: string;
  fio: string[];
  runtimeBased: boolean;
  /** Report completion latency (p50/p99) rather than throughput. */
  latency?: boolean;
}

interface Sample {
  mibs: number;
  iops: number;
  /** Completion latency percentiles, µs. */
  p50Us: number;
  p99Us: number;
}

interface Server {
  label: string;
  start(dir: string, image: string): Promise<{ proc: Subprocess; socket: string; ctl?: ControlClient }>;
  /** Record mode, with the delta log in this directory ("" = the run directory, beside the image). */
  recordDir?: string;
  /** Record mode with the bulk copy's cursor here (0: every write is ahead of the copy, logged without data). */
  cursor?: number;
  /** Record mode as a live migration's coalesce mode records: writes behind the cursor as ranges. */
  ranges?: boolean;
}

function wanmigServe(label: string, name: string, opts: { recordDir?: string; bin?: string; cursor?: number; ranges?: boolean } = {}): Server {
  const bin = opts.bin ?? join(REPO, "dist", "wanmig");
  return {
    label,
    ...opts,
    async start(dir, image) {
      const proc = Bun.spawn([bin, "serve", "--image", image, "--name", name, "--run-dir", dir, "--log", "warn"], { stderr: "inherit" });
      return { proc, socket: join(dir, `${name}.nbd`), ctl: new ControlClient(join(dir, `${name}.ctl`)) };
    },
  };
}

const servers: Server[] = [
  {
    label: "qemu-nbd",
    async start(dir, image) {
      const socket = join(dir, "qemu.sock");
      const proc = Bun.spawn(["qemu-nbd", "-f", "raw", "-t", "-e", "16", "-k", socket, image], { stderr: "inherit" });
      return { proc, socket };
    },
  },
  {
    label: "nbdkit file",
    async start(dir, image) {
      const socket = join(dir, "nbdkit.sock");
      const proc = Bun.spawn(["nbdkit", "-f", "-U", socket, "file", image], { stderr: "inherit" });
      return { proc, socket };
    },
  },
  wanmigServe("wanmig serve", "bench"),
  // Throttling is off in these rows: they measure what recording costs, not the policy.
  // A live migration's two extremes, as the default (coalesce) mode records them: every
  // write ahead of the bulk copy (its start), and every write behind it (its end, and the
  // catch-up). Paper mode logs every write's bytes throughout: the last two rows.
  wanmigServe("wanmig serve (record, ahead of the copy)", "benchahead", { recordDir: "", cursor: 0, ranges: true }),
  wanmigServe("wanmig serve (record, behind the copy)", "benchbehind", { recordDir: "", cursor: 2 ** 50, ranges: true }),
  wanmigServe("wanmig serve (record, paper mode, log on tmpfs)", "benchrec", { recordDir: "/dev/shm" }),
  wanmigServe("wanmig serve (record, paper mode, log on disk)", "benchrecdisk", { recordDir: "" }),
];

function rows(runtime: number): Row[] {
  const timed = ["--time_based", `--runtime=${runtime}`, "--ramp_time=1"];
  return [
    { name: "seq read 1M qd8", fio: ["--rw=read", "--bs=1M", "--iodepth=8", ...timed], runtimeBased: true },
    { name: "seq write 1M qd8", fio: ["--rw=write", "--bs=1M", "--iodepth=8", ...timed], runtimeBased: true },
    { name: "rand write 4k qd16", fio: ["--rw=randwrite", "--bs=4k", "--iodepth=16", "--randrepeat=0", ...timed], runtimeBased: true },
    // One request at a time: the server's own latency, which a guest's fsync-bound work waits on.
    { name: "rand read 4k qd1", fio: ["--rw=randread", "--bs=4k", "--iodepth=1", "--randrepeat=0", ...timed], runtimeBased: true, latency: true },
  ];
}

async function waitForSocket(path: string, proc: Subprocess): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (existsSync(path) && (await $`nbdinfo --size nbd+unix:///?socket=${path}`.nothrow().quiet()).exitCode === 0) return;
    if (proc.exitCode !== null) throw new Error(`server exited ${proc.exitCode}`);
    await Bun.sleep(25);
  }
  throw new Error(`no server on ${path}`);
}

function peakRssKiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : NaN;
}

async function fio(socket: string, row: Row, sizeMiB: number, out: string): Promise<Sample> {
  await $`fio --name=bench --ioengine=nbd --uri=nbd+unix:///?socket=${socket} --size=${sizeMiB}M ${row.fio} --output-format=json --output=${out}`.quiet();
  const job = JSON.parse(readFileSync(out, "utf8")).jobs[0];
  const side = row.fio.some((a) => a.includes("write")) ? job.write : job.read;
  const pct = side.clat_ns?.percentile ?? {};
  return { mibs: side.bw_bytes / 1048576, iops: side.iops, p50Us: (pct["50.000000"] ?? NaN) / 1000, p99Us: (pct["99.000000"] ?? NaN) / 1000 };
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      "size-mib": { type: "string", default: "1024" },
      runtime: { type: "string", default: "5" },
      repeat: { type: "string", default: "1" },
      json: { type: "string" },
      baseline: { type: "string" },
    },
  });
  if (values.baseline)
    servers.push(
      wanmigServe(`baseline serve`, "basebench", { bin: values.baseline }),
      wanmigServe(`baseline serve (record, paper mode, log on tmpfs)`, "basebenchrec", { recordDir: "/dev/shm", bin: values.baseline }),
    );
  const sizeMiB = Number(values["size-mib"]);
  const runtime = Number(values.runtime);
  const repeat = Number(values.repeat);
  await $`bash ${join(REPO, "scripts", "install-deps.sh")} core`; // fio, nbdkit, qemu-nbd
  await $`bun ${join(REPO, "scripts", "build.ts")}`.cwd(REPO);
  const dir = mkdtempSync(join(tmpdir(), "wanmig-bench-"));
  const image = join(dir, "image.raw");
  console.error(`image: ${sizeMiB} MiB of random data in ${dir}; fio ${await $`fio --version`.text()}`.trim());
  await $`head -c ${sizeMiB}M /dev/urandom > ${image}`;

  const results: Record<string, Record<string, Sample>> = {};
  const peak: Record<string, number> = {};
  try {
    for (const srv of servers) {
      const { proc, socket, ctl } = await srv.start(dir, image);
      try {
        await waitForSocket(socket, proc);
        results[srv.label] = {};
        for (const row of rows(runtime)) {
          const samples: Sample[] = [];
          for (let r = 0; r < repeat; r++) {
            if (srv.recordDir !== undefined) {
              await ctl!.throttle({ enabled: false });
              await ctl!.startRecording({ dir: srv.recordDir || undefined, bulkCursor: srv.cursor, ranges: srv.ranges });
            }
            samples.push(await fio(socket, row, sizeMiB, join(dir, "fio.json")));
            if (srv.recordDir !== undefined) {
              const st = await ctl!.stopRecording();
              if (st.path && existsSync(st.path)) unlinkSync(st.path); // keep the disk from filling
            }
          }
          samples.sort((a, b) => (row.latency ? b.p50Us - a.p50Us : a.mibs - b.mibs));
          results[srv.label]![row.name] = samples[Math.floor(samples.length / 2)]!;
          const got = results[srv.label]![row.name]!;
          console.error(`${srv.label.padEnd(36)} ${row.name.padEnd(20)} ${row.latency ? `p50 ${got.p50Us.toFixed(0)} µs, p99 ${got.p99Us.toFixed(0)} µs` : `${got.mibs.toFixed(0)} MiB/s`}`);
        }
        peak[srv.label] = peakRssKiB(proc.pid);
      } finally {
        proc.kill("SIGTERM");
        await proc.exited;
      }
    }
  } finally {
    for (const f of readdirSync(dir)) if (f.endsWith(".deltas")) unlinkSync(join(dir, f));
    rmSync(dir, { recursive: true, force: true });
  }

  const base = results["qemu-nbd"]!;
  const lines = [
    `| server | ${rows(runtime).map((r) => r.name).join(" | ")} | peak RSS |`,
    `|---|${rows(runtime).map(() => "---").join("|")}|---|`,
  ];
  for (const srv of servers) {
    const cells = rows(runtime).map((r) => {
      const v = results[srv.label]![r.name]!;
      if (r.latency) return `p50 ${v.p50Us.toFixed(0)} µs, p99 ${v.p99Us.toFixed(0)} µs (${(base[r.name]!.p50Us / v.p50Us).toFixed(2)}×)`;
      const ratio = v.mibs / base[r.name]!.mibs;
      return `${v.mibs.toFixed(0)} MiB/s, ${(v.iops / 1000).toFixed(1)}k IOPS (${ratio.toFixed(2)}×)`;
    });
    lines.push(`| ${srv.label} | ${cells.join(" | ")} | ${(peak[srv.label]! / 1024).toFixed(0)} MiB |`);
  }
  const plain = results["wanmig serve"]!;
  const nbdkit = results["nbdkit file"]!;
  /** How much faster `a` is than `b` on a row (throughput, or the inverse of p50 latency). */
  const speed = (a: Sample, b: Sample, r: Row) => (r.latency ? b.p50Us / a.p50Us : a.mibs / b.mibs);
  lines.push("", `wanmig serve vs nbdkit: ${rows(runtime).map((r) => `${r.name} ${speed(plain[r.name]!, nbdkit[r.name]!, r).toFixed(2)}×`).join(", ")}`);
  if (values.baseline) {
    const vs = (a: string, b: string) =>
      `${a} vs ${b}: ${rows(runtime).map((r) => `${r.name} ${((speed(results[a]![r.name]!, results[b]![r.name]!, r) - 1) * 100).toFixed(1)}%`).join(", ")}`;
    lines.push(vs("wanmig serve", "baseline serve"), vs("wanmig serve (record, paper mode, log on tmpfs)", "baseline serve (record, paper mode, log on tmpfs)"));
  }
  for (const srv of servers.filter((x) => x.recordDir !== undefined)) {
    const rec = results[srv.label]!;
    lines.push(`${srv.label} vs plain: ${rows(runtime).map((r) => `${r.name} ${((speed(rec[r.name]!, plain[r.name]!, r) - 1) * 100).toFixed(1)}%`).join(", ")}`);
  }
  console.log(lines.join("\n"));
  if (values.json) await Bun.write(values.json, JSON.stringify({ sizeMiB, runtime, repeat, results, peakRssKiB: peak }, null, 2));
}
