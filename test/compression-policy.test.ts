import { describe, expect, test } from "bun:test";
import { CompressionPolicy, LADDER } from "../src/net/compression-policy.ts";

// Levels as measured on shared libraries in 1 MiB units on this class of machine.
const OS: Record<number, { ratio: number; ns: number }> = {
  1: { ratio: 0.389, ns: 2.9 },
  3: { ratio: 0.352, ns: 3.6 },
  6: { ratio: 0.334, ns: 8.5 },
  9: { ratio: 0.331, ns: 13 },
  16: { ratio: 0.321, ns: 104 },
  19: { ratio: 0.302, ns: 164 },
};
const RANDOM: Record<number, { ratio: number; ns: number }> = Object.fromEntries(LADDER.filter((l) => l > 0).map((l) => [l, { ratio: 1, ns: l < 10 ? 1.5 : 40 }]));
const MiB = 1024 * 1024;

/**
 * A sender on a simulated link: each unit costs the sender `baseNs` per byte plus the
 * level's compression, and the link `ratio` × raw / `link` ms; the slower of the two is
 * the wall time (the sender waits for the rest). `receiverNs`: a receiver whose CPU, not a
 * link, sets the pace (its cost per raw byte grows with compression: it decompresses).
 */
function simulate(opts: { units: number; link?: number; data: (unit: number) => Record<number, { ratio: number; ns: number }>; baseNs?: number; receiverNs?: (level: number) => number; rttMs?: number }) {
  const p = new CompressionPolicy(opts.rttMs);
  const levels: number[] = [];
  let probes = 0;
  let dearProbes = 0;
  for (let u = 0; u < opts.units; u++) {
    const level = p.level;
    levels.push(level);
    const d = opts.data(u);
    const ratio = level === 0 ? 1 : d[level]!.ratio;
    const ms = level === 0 ? 0 : (d[level]!.ns * MiB) / 1e6;
    const cpu = ms + ((opts.baseNs ?? 1) * MiB) / 1e6;
    const linkMs = opts.link ? (ratio * MiB) / opts.link : 0;
    const receiverMs = opts.receiverNs ? (opts.receiverNs(level) * MiB) / 1e6 : 0;
    const wall = Math.max(cpu, linkMs, receiverMs);
    p.sent({ level, raw: MiB, wire: ratio * MiB, ms, wallMs: u === 0 ? undefined : wall, waitedMs: wall - cpu });
    // The link as the channel measures it: wire bytes per ms while it waits (the receiver's, if it is the bottleneck).
    const measured = wall > cpu ? (ratio * MiB) / wall : undefined;
    const asked = p.probes(opts.link ?? measured);
    probes += asked.length;
    dearProbes += asked.filter((l) => l > 1).length;
    for (const probe of asked) p.note({ level: probe, raw: MiB, wire: d[probe]!.ratio * MiB, ms: (d[probe]!.ns * MiB) / 1e6 });
    p.decide(opts.link ?? measured);
  }
  return { levels, probes, dearProbes };
}

const tail = (a: number[], n: number) => a.slice(-n);

describe("CompressionPolicy (synthetic links and data)", () => {
  test("a 5 Mbit/s WAN with OS-like data: level 19 within a few units, and it stays there", () => {
    const r = simulate({ units: 100, link: 625, data: () => OS });
    expect(r.levels.indexOf(19)).toBeGreaterThan(0);
    expect(r.levels.indexOf(19)).toBeLessThanOrEqual(2);
    expect(r.levels.filter((l) => l === 19).length).toBeGreaterThanOrEqual(90);
  });

  test("small units with idle gaps between them (a delta stream) do not make the CPU look slow: the level stays up", () => {
    const p = new CompressionPolicy();
    const unit = (level: number, raw: number, wallMs: number, waitedMs: number) => {
      const d = OS[level];
      p.sent({ level, raw, wire: (d?.ratio ?? 1) * raw, ms: ((d?.ns ?? 0) * raw) / 1e6, wallMs, waitedMs });
      for (const probe of p.probes(625)) p.note({ level: probe, raw, wire: OS[probe]!.ratio * raw, ms: (OS[probe]!.ns * raw) / 1e6 });
      p.decide(625);
    };
    for (let i = 0; i < 20; i++) unit(p.level, MiB, 600, 400);
    expect(p.level).toBe(19);
    // 4 KiB deltas, 40 ms apart (the VM's pace, not the sender's).
    for (let i = 0; i < 200; i++) unit(p.level, 4096, 40, 0);
    expect(p.level).toBe(19);
  });

  test("a link faster than the compressor (10 Gbit/s): none", () => {
    const r = simulate({ units: 200, link: 1_250_000, data: () => OS });
    expect(tail(r.levels, 150).every((l) => l === 0)).toBe(true);
  });

  test("a link the sender never waits for: none, from the first units", () => {
    const r = simulate({ units: 100, data: () => OS });
    expect(tail(r.levels, 95).every((l) => l === 0)).toBe(true);
  });

  test("1 Gbit/s with OS-like data: a fast level (compression pays, level 19 would starve the link)", () => {
    const r = simulate({ units: 400, link: 125_000, data: () => OS });
    const late = tail(r.levels, 200);
    // Now and then it tries the level below for two units (a trial that fails), no more.
    expect(late.filter((l) => l >= 1 && l <= 9).length).toBeGreaterThanOrEqual(190);
  });

  test("random data on a slow link: sent as it is (no level gains, the cheapest wins)", () => {
    const r = simulate({ units: 200, link: 625, data: () => RANDOM });
    expect(tail(r.levels, 100).every((l) => l === 0)).toBe(true);
  });

  test("random data on a link that is the bottleneck (1 Gbit/s, 125 bytes/us): sent as it is; each unit probed at level 1 alone, the dearer levels one unit in 16", () => {
    const r = simulate({ units: 320, link: 125_000, data: () => RANDOM });
    expect(tail(r.levels, 300).every((l) => l === 0)).toBe(true);
    expect(r.dearProbes).toBeLessThanOrEqual((320 / 16) * 2 + 8);
    expect(r.probes).toBeLessThanOrEqual(320 + (320 / 16) * 2 + 8);
  });

  test("data that changes from random to OS-like on a slow link: back up to 19", () => {
    const r = simulate({ units: 300, link: 625, data: (u) => (u < 100 ? RANDOM : OS) });
    expect(r.levels[99]).toBe(0);
    expect(tail(r.levels, 150).filter((l) => l === 19).length).toBeGreaterThanOrEqual(140);
  });

  test("a receiver bound by its own CPU (loopback): the trial finds none faster, and the level settles at 0", () => {
    // The receiver's cost per raw byte: hashing and writing, plus decompression when compressed.
    const r = simulate({ units: 2000, data: () => OS, baseNs: 1, receiverNs: (level) => (level === 0 ? 2 : 3) });
    const late = tail(r.levels, 1000);
    expect(late.filter((l) => l === 0).length).toBeGreaterThanOrEqual(950);
  });

  test("over a LAN's round trip it starts uncompressed, and a CPU-bound receiver keeps it there from the first unit", () => {
    const r = simulate({ units: 200, data: () => OS, baseNs: 1, receiverNs: (level) => (level === 0 ? 2 : 3), rttMs: 0.2 });
    expect(r.levels[0]).toBe(0);
    expect(r.levels.filter((l) => l === 0).length).toBeGreaterThanOrEqual(190);
  });

  test("over a WAN's round trip it starts at level 1", () => {
    expect(new CompressionPolicy(50).level).toBe(1);
    expect(new CompressionPolicy().level).toBe(1);
  });

  test("a link known slow from the start (--bandwidth) starts compressed over any round trip, and probes its first unit", () => {
    const p = new CompressionPolicy(0.2, 625);
    expect(p.level).toBe(1);
    p.sent({ level: 1, raw: MiB, wire: OS[1]!.ratio * MiB, ms: (OS[1]!.ns * MiB) / 1e6, waitedMs: 0 });
    const probes = p.probes(625);
    expect(probes).toContain(19);
    for (const probe of probes) p.note({ level: probe, raw: MiB, wire: OS[probe]!.ratio * MiB, ms: (OS[probe]!.ns * MiB) / 1e6 });
    p.decide(625);
    expect(p.level).toBe(19);
  });
});
