// What `source` shows while it runs, without --json: on a terminal, one line redrawn in
// place (phase, bytes, rate, ETA, deltas queued, throttle level); elsewhere (a runbook's
// log file), one plain line per phase change, so logs stay readable.

import { formatBytes } from "../util/format.ts";

type Event = Record<string, unknown>;

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  if (seconds < 60) return `${Math.ceil(seconds)}s`;
  return `${Math.floor(seconds / 60)}m${String(Math.ceil(seconds % 60)).padStart(2, "0")}s`;
}

export function progressReporter(out: { write(s: string): unknown; isTTY?: boolean }) {
  const tty = !!out.isTTY;
  const started = performance.now();
  let line = "";
  const draw = (text: string) => {
    line = text;
    out.write(`\r\x1b[K${text}`);
  };
  return {
    onEvent(e: Event): void {
      if (e.event === "phase") {
        if (tty) draw(`${e.phase}…`);
        else out.write(`phase: ${e.phase}\n`);
        return;
      }
      if (e.event === "reconnect" && !tty) out.write(`link broken; reconnect attempt ${e.attempt}\n`);
      if (e.event !== "progress" || !tty) return;
      if (e.phase === "bulk") {
        const done = e.offset as number;
        const size = e.size as number;
        const secs = (performance.now() - started) / 1000;
        const rate = (e.bytesSent as number) / secs;
        const eta = rate > 0 ? ((size - done) / done) * secs : Number.NaN;
        draw(`bulk ${((done / size) * 100).toFixed(1)}%  ${formatBytes(done)}/${formatBytes(size)}  sent ${formatBytes(e.bytesSent as number)} at ${formatBytes(rate)}/s  ETA ${formatEta(eta)}`);
      } else if (e.phase === "deltas") {
        const cap = e.rateCap ? ` (VM writes held to ${formatBytes(e.rateCap as number)}/s)` : "";
        const copying = e.copyLeftBytes ? ` (a copy pass: ${formatBytes(e.copyLeftBytes as number)} of it)` : "";
        const held = e.heldBytes ? ` + ${formatBytes(e.heldBytes as number)} held` : "";
        const pause = e.pauseHeld ? `; VM pause held back (~${e.pauseEstimateMs} ms with its writes in flight)` : "";
        draw(
          `deltas: ${e.deltasSent} sent, ${formatBytes(e.queuedBytes as number)} queued${held}${copying}, ${formatBytes(e.unackedBytes as number)} unacked; ` +
            `hand-off ~${e.estimateMs} ms, budget ${e.budgetMs} ms; throttle level ${e.throttleLevel}${cap}${pause}`,
        );
      }
    },
    /** Clears the live line before the summary is printed. */
    end(): void {
      if (tty && line) out.write("\r\x1b[K");
    },
  };
}
