// How many connections `--streams auto` opens (lanes.ts). One TCP stream keeps at most its
// window in flight: the kernel's socket buffer maximum (tcp_wmem at the sender, tcp_rmem at
// the receiver), of which about three quarters carry data (measured here: 4 MiB of tcp_wmem
// gave one stream 280 Mbit/s at 100 ms, 3.5 MB in flight). A link of R bytes/s and a round
// trip of T needs R × T in flight, so R × T / window streams.
//
// The link's rate is not known when the first connection opens, so auto starts with one and
// opens the rest only once the bulk copy has measured that one bound by its window (it moves
// about a window per round trip): a slow link (the 5 Mbit/s WAN) keeps its one stream, whose
// compression and queue it has to itself. How many then: enough for 1 Gbit/s, unless
// --bandwidth says. Streams beyond what the link needs are not
// free: measured through the link emulator on this 2-core host, 8 streams moved 512 MiB at
// 1 Gbit/s, 100 ms at 352 Mbit/s and 4 streams at 463 (each stream's runs wait in turn at the
// receiver, and cost CPU); at 100 Mbit/s, 50 ms, 8 streams overflowed the bottleneck's queue
// (799 drops) and moved 72 Mbit/s, 2 streams 90 and one 89. A faster link than 1 Gbit/s wants
// --streams N (or --bandwidth, which auto reads).

import { readFileSync } from "node:fs";

/** Never more than this: past it, every stream's share of the bottleneck's queue is what limits, not the window. */
export const MAX_AUTO_STREAMS = 8;
const ASSUMED_LINK_BYTES_PER_SEC = 1e9 / 8;
const WINDOW_SHARE = 0.75;

export type StreamsSetting = number | "auto";

export function parseStreams(text: string): StreamsSetting {
  if (text === "auto") return "auto";
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 16) throw new RangeError(`--streams ${text}: give auto, or a whole number from 1 to 16`);
  return n;
}

/** Streams for a round trip of `rttMs`; `bytesPerSec`: the link's rate if known (--bandwidth). */
export function autoStreams(o: { rttMs: number; bytesPerSec?: number; sendBufMax: number; recvBufMax: number }): number {
  const window = WINDOW_SHARE * Math.min(o.sendBufMax, o.recvBufMax);
  const inFlight = ((o.bytesPerSec ?? ASSUMED_LINK_BYTES_PER_SEC) * o.rttMs) / 1000;
  return Math.max(1, Math.min(MAX_AUTO_STREAMS, Math.ceil(inFlight / window)));
}

/** The host's TCP buffer maxima (the third field of tcp_wmem and tcp_rmem); Linux's defaults where unreadable. */
export function socketBufferMax(): { sendBufMax: number; recvBufMax: number } {
  const third = (path: string, fallback: number) => {
    try {
      return Number(readFileSync(path, "utf8").trim().split(/\s+/)[2]) || fallback;
    } catch {
      return fallback;
    }
  };
  return { sendBufMax: third("/proc/sys/net/ipv4/tcp_wmem", 4 * 1024 * 1024), recvBufMax: third("/proc/sys/net/ipv4/tcp_rmem", 6 * 1024 * 1024) };
}

/** Past this share of one window per round trip, a stream is taken to be bound by its window, not by the link. */
const WINDOW_BOUND_SHARE = 0.5;

/** Whether one stream moving `bytesPerMs` over `rttMs` is held by its window: more streams would move more. */
export function windowBound(o: { bytesPerMs: number; rttMs: number; sendBufMax: number; recvBufMax: number }): boolean {
  const perRoundTrip = WINDOW_SHARE * Math.min(o.sendBufMax, o.recvBufMax);
  return o.bytesPerMs * o.rttMs >= WINDOW_BOUND_SHARE * perRoundTrip;
}

/** The streams to open: a fixed number as asked, else from the measured round trip. */
export function streamsFor(setting: StreamsSetting, rttMs: number, bytesPerSec?: number): number {
  return setting === "auto" ? autoStreams({ rttMs, bytesPerSec, ...socketBufferMax() }) : setting;
}
