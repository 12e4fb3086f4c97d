// The throttle while the bulk copy runs. Nothing is shipped from the log then, so the
// catch-up controller has no shrinking queue to watch; yet every byte the VM writes now is
// work for after the bulk. A VM that writes faster than the link could clear afterwards
// would make the migration take ever longer (the paper's "diabolical" writer: 3 days).
// So, while the bulk runs: if the log grows faster than half the link's rate, the VM's
// writes are held to that half. The migration then takes at most about twice the time it
// would take with no writer: the backlog at the end of the bulk is at most half the bulk's
// time in link time, and the catch-up controller takes over from there.
//
// Until the link is measured (the connection, the handshake, the first 200 ms of bulk: on
// the WAN about a second) the VM's writes are held to PROVISIONAL_CAP. Without it a
// diabolical writer filled 430 MB of log on the 5 Mbit/s WAN in that second, dirtying the
// whole disk before the first verdict. The first verdict lifts it, or puts the real cap in
// its place.

import type { ControlClient } from "../disk/service/control-client.ts";
import { type RecordingWatch, reportShipped } from "./recording-watch.ts";

/**
 * The VM's write allowance from the moment recording starts until the first verdict
 * (bytes/s): about a 300 Mbit/s link's half share. A LAN writer is held to it for a few
 * hundred ms; a WAN writer writes a few MB where it wrote hundreds.
 */
export const PROVISIONAL_CAP = 16 * 1000 * 1000;
/** Growth at this share of the provisional cap or more: the cap, not the writer, set the pace. */
const HELD_SHARE = 0.8;
/** A bulk that ends before the first verdict is judged at its end if the window spans this much. */
const LAST_LOOK_MIN_MS = 50;
/** The VM's share of the link during the bulk copy, once it writes faster than that. */
export const BULK_SHARE = 0.5;
/** The catch-up controller's level with about that share (rateCap: 0.9 / 2): where it starts after an engaged bulk throttle. */
export const BULK_LEVEL = 2;
const EVERY_MS = 100;
const WINDOW_MS = 2000;
/** The first verdict comes this soon: a VM writing 300 MB/s fills a gigabyte of log in the seconds a full window would take. */
const FIRST_VERDICT_MS = 200;

/**
 * The cap (bytes/s) for a log growing at `growth` bytes/ms beside a link of `link` wire
 * bytes/ms; undefined: none needed. The VM's writes are taken as incompressible: how the
 * bulk compresses says nothing of them (on the WAN a bulk of half-zero blocks went 2:1
 * while the writer's data did not compress at all, and the cap let it write 1.5x the link).
 * The catch-up measures the deltas' own ratio.
 */
export function bulkRateCap(growth: number, link: number | undefined): number | undefined {
  if (!link) return undefined;
  const allowance = BULK_SHARE * link; // bytes per ms
  return growth > allowance ? Math.max(4096, Math.floor(allowance * 1000)) : undefined;
}

/** The stream's sending side, frame by frame (the bulk's own progress comes per chunk: seconds apart on a slow link). */
export interface WireGauge {
  /** Bytes handed to the socket so far. */
  handedBytes(): number;
  /** The link's rate as measured under backlog (drain-meter.ts), once it has been; the channel's. */
  linkBytesPerMs(): number | undefined;
}

export class BulkThrottle {
  private timer?: ReturnType<typeof setInterval>;
  private failure?: unknown;
  private window: { at: number; log: number; handed: number }[] = [];
  /** The cap in force (bytes/s): the provisional one until the first verdict, then the real one once engaged. */
  cap?: number;
  /** The provisional cap, until the first verdict replaces it. */
  private provisional?: number;
  private busy = false;
  /** The highest cap's level, for the migration's throttle steps (1 once engaged). */
  engaged = false;

  constructor(
    private readonly ctl: ControlClient,
    private readonly watch: RecordingWatch,
    private readonly wire: WireGauge,
    /** The cap already set when recording started (or an earlier attempt's), until the first verdict. */
    provisional?: number,
  ) {
    this.cap = provisional;
    this.provisional = provisional;
  }

  start(): void {
    this.timer = setInterval(() => void this.tick(), EVERY_MS);
  }

  /** The link's rate (wire bytes/ms) measured while the bulk kept it busy, if it ever did. */
  linkBytesPerMs(): number | undefined {
    return this.wire.linkBytesPerMs();
  }

  /** Throws what went wrong in the background (the serve lost the recording): called before each bulk read. */
  check(): void {
    if (this.failure) throw this.failure;
  }

  /**
   * Stops; the cap lapses with its lease, or is replaced by the catch-up controller's at its
   * first report. A bulk that ended before the first verdict (a short one on a fast link;
   * ticks wait while the bulk keeps the CPUs busy) gets one from what the window holds; with
   * nothing in it, the provisional cap stands for the catch-up to replace.
   */
  stop(): void {
    clearInterval(this.timer);
    const look = this.look(LAST_LOOK_MIN_MS);
    if (this.provisional !== undefined && look?.link !== undefined) this.firstVerdict(look.growth, look.link);
  }

  /**
   * What the window shows, once it spans `minMs`: the log's growth, and the link's rate. The
   * link is as measured under backlog; without a backlog ever (a link faster than the
   * reader) what went out in the window is what we can ship, and a window spent scanning
   * holes ships nothing: then no link, and no verdict, which is better than a cap of zero.
   */
  private look(minMs: number): { growth: number; link?: number } | undefined {
    const first = this.window[0];
    const last = this.window.at(-1);
    if (!first || !last || last.at - first.at < minMs) return undefined;
    const dt = last.at - first.at;
    return { growth: (last.log - first.log) / dt, link: this.linkBytesPerMs() ?? ((last.handed - first.handed) / dt || undefined) };
  }

  /**
   * The first verdict. Growth under the provisional cap that still outruns half the link
   * engages the real cap (lower). A writer the provisional cap held back may be faster than
   * it shows: it gets half the link, which is what it would have got had it shown its speed
   * (lifting the cap instead let a diabolical writer run free through a loopback bulk too
   * short for a second verdict: 1.4 s became 6.5 s). Growth well within it lifts the cap.
   */
  private firstVerdict(growth: number, link: number): void {
    const held = growth * 1000 >= HELD_SHARE * this.provisional!;
    this.provisional = undefined;
    this.cap = bulkRateCap(growth, link) ?? (held ? bulkRateCap(Infinity, link) : undefined);
    this.engaged = this.cap !== undefined;
  }

  private async tick(): Promise<void> {
    if (this.busy || this.failure) return;
    this.busy = true;
    try {
      // The serve's answer carries the log's size: no stat of our own. Its ship cost, not its
      // file bytes: a write behind the cursor is a 32-byte range for the catch-up to send whole.
      const answer = await reportShipped(this.ctl, this.watch, 0n, this.cap);
      const now = performance.now();
      const handed = this.wire.handedBytes();
      this.window.push({ at: now, log: answer.log?.shipBytes ?? 0, handed });
      while (this.window.length > 2 && now - this.window[1]!.at >= WINDOW_MS) this.window.shift();
      const look = this.look(FIRST_VERDICT_MS);
      if (look?.link !== undefined) {
        const cap = bulkRateCap(look.growth, look.link);
        if (this.provisional !== undefined) {
          this.firstVerdict(look.growth, look.link);
          await reportShipped(this.ctl, this.watch, 0n, this.cap);
        } else if (cap !== undefined && (this.cap === undefined || cap < this.cap)) {
          // Once engaged it stays: a capped writer's growth no longer shows what it would write.
          this.cap = cap;
          this.engaged = true;
          await reportShipped(this.ctl, this.watch, 0n, this.cap); // at once, not a tick later
        }
      }
    } catch (err) {
      this.failure = err;
    } finally {
      this.busy = false;
    }
  }
}
