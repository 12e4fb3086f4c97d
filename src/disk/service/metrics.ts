// GET /metrics on the control socket: the serve's counters in Prometheus text format
// (version 0.0.4), one family per line group, labelled with the VM's name; the I/O families
// have a sample per disk, labelled with its export (disk0, disk1, ...).
import type { DiskStatus, ServeStatus } from "./status.ts";
import type { NbdStats } from "../nbd/nbd-connection.ts";

type Family = [name: string, type: "counter" | "gauge", help: string, value: number | ((io: NbdStats, disk: DiskStatus) => number)];

export function renderMetrics(s: ServeStatus): string {
  const families: Family[] = [
    ["wanmig_nbd_clients", "gauge", "NBD clients connected now", s.clients],
    ["wanmig_nbd_connections_total", "counter", "NBD connections accepted", s.connectionsTotal],
    ["wanmig_io_reads_total", "counter", "NBD reads served", (io) => io.reads],
    ["wanmig_io_writes_total", "counter", "NBD writes applied", (io) => io.writes],
    ["wanmig_io_flushes_total", "counter", "NBD flushes", (io) => io.flushes],
    ["wanmig_io_read_bytes_total", "counter", "bytes read", (io) => io.bytesRead],
    ["wanmig_io_written_bytes_total", "counter", "bytes written", (io) => io.bytesWritten],
    ["wanmig_io_errors_total", "counter", "NBD requests answered with an error", (io) => io.errors],
    ["wanmig_disk_size_bytes", "gauge", "the disk's size", (_io, d) => d.size],
    ["wanmig_recording", "gauge", "1 while record mode is on", s.recording.active ? 1 : 0],
    ["wanmig_recording_failed", "gauge", "1 if the delta log could not be written", s.recording.failed ? 1 : 0],
    ["wanmig_recording_deltas", "gauge", "deltas in the current delta log", s.recording.records],
    ["wanmig_recording_bytes", "gauge", "bytes of data in the current delta log", s.recording.bytes],
    ["wanmig_throttle_level", "gauge", "write throttling step (0: none)", s.throttle.level],
    ["wanmig_throttle_delay_microseconds", "gauge", "delay added to each write now", s.throttle.currentDelayUs],
    ["wanmig_throttle_rate_cap_bytes_per_second", "gauge", "write rate the migrating source allows the VM now (0: no cap)", s.throttle.rateCapBytesPerSec ?? 0],
    ["wanmig_throttle_delta_queue", "gauge", "deltas recorded and not yet shipped", s.throttle.deltaQueue],
    ["wanmig_throttle_delayed_writes_total", "counter", "writes that were delayed", s.throttle.delayedWrites],
    ["wanmig_fenced", "gauge", "1 once the disk is fenced (it has moved away)", s.fence.fenced ? 1 : 0],
    ["wanmig_fence_refused_writes_total", "counter", "writes refused by the fence", s.fence.refusedWrites],
    ["wanmig_handoff_unfinished", "gauge", "1 while fenced by a hand-off that neither finished nor rolled back", s.handoff.state === "unfinished" ? 1 : 0],
  ];
  const name = JSON.stringify(s.name);
  const samples = (family: string, value: Family[3]) =>
    typeof value === "number" ? `${family}{name=${name}} ${value}\n` : s.disks.map((d) => `${family}{name=${name},disk=${JSON.stringify(d.export)}} ${value(d.io, d)}\n`).join("");
  return families.map(([family, type, help, value]) => `# HELP ${family} ${help}\n# TYPE ${family} ${type}\n${samples(family, value)}`).join("");
}
