// --streams auto on synthetic hosts: enough streams for the round trip's window, no more.
import { describe, expect, test } from "bun:test";
import { autoStreams, parseStreams, windowBound } from "../src/net/stream-count.ts";

const MiB = 1024 * 1024;
const host = { sendBufMax: 4 * MiB, recvBufMax: 32 * MiB }; // Debian's defaults here

describe("--streams auto", () => {
  test("loopback and a LAN: one", () => {
    expect(autoStreams({ rttMs: 0.1, ...host })).toBe(1);
    expect(autoStreams({ rttMs: 5, ...host })).toBe(1);
  });

  test("1 Gbit/s assumed: 2 at 50 ms, 4 at 100 ms (one stream's 4 MiB window carries ~280 Mbit/s there)", () => {
    expect(autoStreams({ rttMs: 50, ...host })).toBe(2);
    expect(autoStreams({ rttMs: 100, ...host })).toBe(4);
  });

  test("--bandwidth known: a slow link gets one, a 10 Gbit/s one the most auto opens", () => {
    expect(autoStreams({ rttMs: 100, bytesPerSec: 5e6 / 8, ...host })).toBe(1);
    expect(autoStreams({ rttMs: 100, bytesPerSec: 10e9 / 8, ...host })).toBe(8);
  });

  test("a host tuned for long paths (64 MiB buffers) needs fewer", () => {
    expect(autoStreams({ rttMs: 100, sendBufMax: 64 * MiB, recvBufMax: 64 * MiB })).toBe(1);
  });

  test("a number from 1 to 16, or auto; anything else is refused", () => {
    expect(parseStreams("auto")).toBe("auto");
    expect(parseStreams("4")).toBe(4);
    for (const bad of ["0", "17", "2.5", "many", ""]) expect(() => parseStreams(bad)).toThrow(/--streams/);
  });

  test("one stream is window-bound at 1 Gbit/s, 100 ms (280 Mbit/s: 3.5 MB a round trip), not on a 5 Mbit/s WAN or at 100 Mbit/s, 5 ms", () => {
    expect(windowBound({ bytesPerMs: 35_000, rttMs: 100, ...host })).toBe(true);
    expect(windowBound({ bytesPerMs: 625, rttMs: 100, ...host })).toBe(false);
    expect(windowBound({ bytesPerMs: 12_500, rttMs: 5, ...host })).toBe(false);
  });
});
