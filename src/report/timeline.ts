// The migration's timeline as a picture, like the paper's figures: the throughput on the
// wire, the delta queue, the throttle level, the phases, and the pause (fence to the
// destination's verified image) marked. Built from the same events `--json` prints, each
// stamped as it happens; drawn as one self-contained SVG (or an HTML page holding it and
// the final figures).
//
// The throughput is what crossed the link: the source's "sample" events carry the wire
// bytes handed to it so far (after compression, after --bandwidth), read every 250 ms. A
// link of --bandwidth's rate carries them no faster than that rate (throughLink), and the
// curve is the mean over windows of a length the picture states (meanRates). Events without
// those samples (another mode's, an older log's) fall back to the image bytes queued, and
// the panel says so.

type Event = Record<string, unknown>;
export interface Point {
  t: number;
  v: number;
}

/** The narrowest the pause is drawn (px): 14 ms in a 10 s picture is a seventh of a pixel. */
export const MIN_PAUSE_PX = 6;

/**
 * What a link of `bytesPerSec` carries of cumulative bytes handed to it: a queue drained at
 * that rate. --bandwidth's token bucket lets a quarter second's worth go at once after an
 * idle spell, and a BULK frame is handed whole (up to a 4 MiB chunk): on a link of that rate
 * those bytes queue and leave at the rate. What is still queued at the last sample drains
 * after it, so every byte is drawn.
 */
export function throughLink(handed: Point[], bytesPerSec: number): Point[] {
  if (!handed.length || !(bytesPerSec > 0)) return handed;
  const perMs = bytesPerSec / 1000;
  let carried = handed[0]!.v;
  const out: Point[] = [{ ...handed[0]! }];
  for (let i = 1; i < handed.length; i++) {
    carried = Math.min(handed[i]!.v, carried + perMs * (handed[i]!.t - handed[i - 1]!.t));
    out.push({ t: handed[i]!.t, v: carried });
  }
  const last = handed[handed.length - 1]!;
  if (last.v > carried) out.push({ t: last.t + (last.v - carried) / perMs, v: last.v });
  return out;
}

/**
 * A cumulative count (bytes, answers) as its mean rate per second over consecutive windows
 * of `windowMs`, each point holding its window's mean from the previous point's instant.
 * Between two samples the count is taken to grow evenly: a count whose every step respects
 * a rate never shows above it, whatever the windows. A short last window joins the one
 * before it (a sliver's mean is noise).
 */
export function meanRates(samples: Point[], windowMs: number): Point[] {
  if (samples.length < 2) return [];
  const first = samples[0]!.t;
  const last = samples[samples.length - 1]!.t;
  let i = 0;
  /** The count at `t`, for `t` never decreasing from one call to the next. */
  const at = (t: number) => {
    while (i + 1 < samples.length && samples[i + 1]!.t <= t) i++;
    const a = samples[i]!;
    const b = samples[i + 1];
    if (!b || t <= a.t) return a.v;
    return a.v + ((b.v - a.v) * (t - a.t)) / (b.t - a.t);
  };
  const out: Point[] = [];
  let from = first;
  let count = at(first);
  while (from < last) {
    let to = Math.min(last, from + windowMs);
    if (last - to < windowMs / 2) to = last;
    const next = at(to);
    out.push({ t: to, v: Math.max(0, next - count) / ((to - from) / 1000) });
    from = to;
    count = next;
  }
  return out;
}

/** The averaging window (ms) for a picture spanning `spanMs`: some 100 windows, at least two of the 250 ms samples. */
export function smoothingWindow(spanMs: number): number {
  for (const s of [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600]) if (spanMs / (s * 1000) <= 100) return s * 1000;
  return 1_800_000;
}

/** An axis from 0: its top and the step between ticks, round numbers; whole steps for `integer` quantities. A max of 0 still spans 0..1. */
export function axisTicks(max: number, integer = false): { top: number; step: number; ticks: number[] } {
  const m = max > 0 && Number.isFinite(max) ? max : 1;
  const raw = m / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 2.5, 5, 10].map((k) => k * mag).find((s) => s >= raw) ?? 10 * mag;
  if (integer) step = Math.max(1, Math.ceil(step));
  const top = Math.max(step, Math.ceil(m / step - 1e-9) * step);
  const ticks: number[] = [];
  for (let k = 0; k * step <= top + 1e-9; k++) ticks.push(+(k * step).toPrecision(6));
  return { top, step, ticks };
}

/** The width (px) a label takes at `size` px, a little over (sans-serif averages about 0.55 em). */
export function labelWidth(s: string, size: number): number {
  return [...s].length * size * 0.62;
}

interface Line {
  pts: Point[];
  /** Where the first step starts (a rate's first window); else at the first point. */
  from?: number;
  color: string;
  name: string;
}
interface Panel {
  /** Bold: the quantity and its unit; then `detail`, plain. */
  label: string;
  detail?: string;
  /** The y axis's unit, written along it. */
  unit: string;
  lines: Line[];
  scale: number;
  integer?: boolean;
  /** A horizontal line (in the panel's units) and its legend. */
  cap?: { v: number; name: string };
  /** Said in the panel when every value is 0. */
  whenFlat?: string;
}

export class Timeline {
  private readonly events: { t: number; e: Event }[] = [];
  private readonly counters: { label: string; name: string; samples: Point[] }[] = [];

  /** `t`: when it happened (wall clock, ms): the event's own `at` if it has one, else now; or given (a migration's events read back from its log). */
  add(e: Event, t = typeof e.at === "number" ? e.at : Date.now()): void {
    this.events.push({ t, e });
  }

  /** A panel below the migration's: a cumulative count (a client's answers, say) drawn as a rate per second. */
  addCounter(label: string, name: string, samples: Point[]): void {
    this.counters.push({ label, name, samples });
  }

  private series(event: string, phase: string | undefined, key: string): Point[] {
    return this.events
      .filter(({ e }) => e.event === event && (phase === undefined || e.phase === phase) && typeof e[key] === "number")
      .map(({ t, e }) => ({ t, v: e[key] as number }))
      .sort((a, b) => a.t - b.t);
  }

  /** The throughput panel: the wire's, through the link; else (no wire samples) the image bytes queued. */
  private throughput(windowMs: number, phases: { t: number; name: string }[]): Panel {
    const win = `mean over each ${windowMs / 1000} s`;
    const wire = this.series("sample", undefined, "wireBytes");
    const caps = this.series("sample", undefined, "linkBytesPerSec");
    const cap = caps.length ? caps[caps.length - 1]!.v : undefined;
    const label = "throughput (MiB/s)";
    const scale = 1 / (1 << 20);
    if (wire.length >= 2) {
      return {
        label,
        detail: `: bytes on the wire (after compression), ${win}`,
        unit: "MiB/s",
        scale,
        lines: [{ pts: meanRates(cap ? throughLink(wire, cap) : wire, windowMs), from: wire[0]!.t, color: "#1f77b4", name: "wire" }],
        cap: cap ? { v: cap, name: `cap ${(cap * scale).toFixed(1)} MiB/s (--bandwidth)` } : undefined,
      };
    }
    const bulkStart = phases.find((p) => p.name === "bulk")?.t;
    const deltasStart = phases.find((p) => p.name === "deltas")?.t;
    const bulk = bulkStart === undefined ? [] : meanRates([{ t: bulkStart, v: 0 }, ...this.series("progress", "bulk", "bytesSent")], windowMs);
    const deltas = deltasStart === undefined ? [] : meanRates([{ t: deltasStart, v: 0 }, ...this.series("progress", "deltas", "deltaBytes")], windowMs);
    return {
      label,
      detail: `: image bytes queued (before compression; no wire samples), ${win}`,
      unit: "MiB/s",
      scale,
      lines: [
        { pts: bulk, from: bulkStart, color: "#1f77b4", name: "bulk" },
        { pts: deltas, from: deltasStart, color: "#d62728", name: "deltas" },
      ],
    };
  }

  svg(title: string): string {
    // A counter's samples (a client's, from before the migration to after it) widen the span.
    const counted = this.counters.flatMap((c) => c.samples.map((p) => p.t));
    const t0 = Math.min(this.events[0]?.t ?? Date.now(), ...this.events.map((x) => x.t), ...counted);
    const t1 = Math.max(t0 + 1, ...this.events.map((x) => x.t), ...counted);
    const phases = this.events.filter(({ e }) => e.event === "phase").map(({ t, e }) => ({ t: (e.at as number) ?? t, name: String(e.phase) }));
    const windowMs = smoothingWindow(t1 - t0);
    const fence = phases.find((p) => p.name === "handoff")?.t;
    const done = this.events.find(({ e }) => e.event === "done");
    // The pause lasts what the summary says (fence to the destination's verified image),
    // ending at "done": that event comes a little after the verified image (the recording
    // stopped first; 70 ms were drawn as 125 from the hand-off's start). Freeze-and-copy
    // fences before its bulk copy, long before its "handoff".
    const pauseMs = typeof done?.e.storageDowntimeMs === "number" ? done.e.storageDowntimeMs : undefined;
    const pauseAt = done && pauseMs !== undefined ? { from: Math.max(t0, done.t - pauseMs), to: done.t } : fence !== undefined ? { from: fence, to: done?.t ?? t1 } : undefined;

    const panels: Panel[] = [
      this.throughput(windowMs, phases),
      {
        label: "delta queue (writes)",
        detail: ": recorded, not yet shipped",
        unit: "writes",
        lines: [
          { pts: this.series("sample", undefined, "deltaQueue"), color: "#9467bd", name: "queued" },
          { pts: this.series("sample", undefined, "heldWrites"), color: "#8c564b", name: "held by the cap (not yet queued)" },
        ],
        scale: 1,
        integer: true,
      },
      {
        label: "VM write cap (MB/s)",
        detail: ": what the source lets the VM write (bulk throttle, then the catch-up's level)",
        unit: "MB/s",
        lines: [{ pts: this.series("sample", undefined, "rateCap").map((p) => ({ t: p.t, v: p.v / 1e6 })), color: "#d62728", name: "cap" }],
        scale: 1,
        whenFlat: "no cap: the VM wrote freely throughout",
      },
      {
        label: "throttle level",
        detail: ": the paper's queue-length throttle (--deltas paper), each level doubling the write delay",
        unit: "level",
        lines: [{ pts: this.series("sample", undefined, "throttleLevel"), color: "#ff7f0e", name: "level" }],
        scale: 1,
        integer: true,
        whenFlat: "no throttling: level 0 throughout",
      },
      ...this.counters.map((c) => ({
        label: c.label,
        detail: `, ${windowMs / 1000} s windows`,
        unit: `${c.name}/s`,
        lines: [{ pts: meanRates(c.samples, windowMs), from: c.samples[0]?.t, color: "#2ca02c", name: c.name }],
        scale: 1,
      })),
    ];

    const W = 960;
    const left = 86;
    const right = 20;
    const panelH = 150;
    const gap = 44;
    const plotW = W - left - right;
    const x = (t: number) => left + ((t - t0) / (t1 - t0)) * plotW;

    // Phase names above the plot, each from its start; pushed left to end inside the width,
    // and stacked in rows where they would overlap (a 14 ms hand-off's "handoff" beside "deltas").
    const phaseSize = 10;
    const rows: number[] = []; // each row's rightmost end so far
    const placed = phases.map((ph) => {
      const w = labelWidth(ph.name, phaseSize);
      const lx = Math.max(left, Math.min(x(ph.t) + 2, W - right - w));
      let row = rows.findIndex((end) => lx >= end + 6);
      if (row < 0) row = rows.push(0) - 1;
      rows[row] = lx + w;
      return { ...ph, lx, row };
    });
    const stripTop = 40;
    const top = stripTop + Math.max(1, rows.length) * 12 + 26;
    const H = top + panels.length * (panelH + gap) + 40;
    const parts: string[] = [
      `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
      `<rect width="${W}" height="${H}" fill="white"/>`,
      `<text x="${left}" y="24" font-size="16" font-weight="bold">${esc(title)}</text>`,
    ];
    for (const p of placed) {
      const y = stripTop + p.row * 12 + 9;
      parts.push(`<text x="${p.lx.toFixed(1)}" y="${y}" font-size="${phaseSize}" fill="#555">${esc(p.name)}</text>`);
      parts.push(`<line x1="${x(p.t).toFixed(1)}" y1="${y + 2}" x2="${x(p.t).toFixed(1)}" y2="${top}" stroke="#bbb" stroke-dasharray="3,3"/>`);
    }

    // The pause, at least MIN_PAUSE_PX wide, centred on where it was, inside the plot.
    let pause: { xa: number; xb: number; ms: number; widened: boolean } | undefined;
    if (pauseAt) {
      let xa = x(pauseAt.from);
      let xb = x(pauseAt.to);
      const widened = xb - xa < MIN_PAUSE_PX;
      if (widened) {
        const c = (xa + xb) / 2;
        xa = Math.max(left, Math.min(c - MIN_PAUSE_PX / 2, W - right - MIN_PAUSE_PX));
        xb = xa + MIN_PAUSE_PX;
      }
      pause = { xa, xb, ms: Math.round(pauseMs ?? pauseAt.to - pauseAt.from), widened };
    }

    panels.forEach((p, i) => {
      const y0 = top + i * (panelH + gap);
      const dataMax = Math.max(0, ...p.lines.flatMap((l) => l.pts.map((q) => q.v * p.scale)));
      const axis = axisTicks(Math.max(dataMax, p.cap ? p.cap.v * p.scale : 0) * (p.cap ? 1.05 : 1), p.integer);
      const y = (v: number) => y0 + panelH - ((v * p.scale) / axis.top) * panelH;
      parts.push(`<rect x="${left}" y="${y0}" width="${plotW}" height="${panelH}" fill="none" stroke="#999"/>`);
      parts.push(`<text x="${left}" y="${y0 - 8}"><tspan font-weight="bold">${esc(p.label)}</tspan>${p.detail ? `<tspan fill="#555">${esc(p.detail)}</tspan>` : ""}</text>`);
      // The y axis: round ticks, and its unit along it.
      for (const v of axis.ticks) {
        const ty = y0 + panelH - (v / axis.top) * panelH;
        if (v > 0) parts.push(`<line x1="${left}" y1="${ty.toFixed(1)}" x2="${W - right}" y2="${ty.toFixed(1)}" stroke="#eee"/>`);
        parts.push(`<text x="${left - 6}" y="${(ty + 4).toFixed(1)}" text-anchor="end">${fmtTick(v)}</text>`);
      }
      parts.push(`<text transform="translate(${16},${y0 + panelH / 2}) rotate(-90)" text-anchor="middle" fill="#333">${esc(p.unit)}</text>`);
      if (pause) parts.push(`<rect x="${pause.xa.toFixed(1)}" y="${y0}" width="${(pause.xb - pause.xa).toFixed(1)}" height="${panelH}" fill="#d62728" fill-opacity="${pause.widened ? 0.45 : 0.15}" stroke="#d62728" stroke-width="1"/>`);
      for (const ph of phases) parts.push(`<line x1="${x(ph.t).toFixed(1)}" y1="${y0}" x2="${x(ph.t).toFixed(1)}" y2="${y0 + panelH}" stroke="#bbb" stroke-dasharray="3,3"/>`);
      if (p.cap) parts.push(`<line x1="${left}" y1="${y(p.cap.v).toFixed(1)}" x2="${W - right}" y2="${y(p.cap.v).toFixed(1)}" stroke="#555" stroke-dasharray="6,4"/>`);
      for (const l of p.lines) {
        if (!l.pts.length) continue;
        // Steps: each value holds from the previous point to its own.
        let prev = l.from ?? l.pts[0]!.t;
        let d = `M${x(prev).toFixed(1)},${y(0).toFixed(1)}`;
        for (const q of l.pts) {
          d += ` L${x(prev).toFixed(1)},${y(q.v).toFixed(1)} L${x(q.t).toFixed(1)},${y(q.v).toFixed(1)}`;
          prev = q.t;
        }
        parts.push(`<path d="${d}" fill="none" stroke="${l.color}" stroke-width="1.6"/>`);
      }
      if (p.whenFlat && dataMax === 0) parts.push(`<text x="${left + plotW / 2}" y="${y0 + panelH / 2}" text-anchor="middle" fill="#777">${esc(p.whenFlat)}</text>`);
      // The legend, right-aligned above the panel.
      const keys = [...p.lines.map((l) => ({ name: l.name, mark: `<rect width="10" height="10" fill="${l.color}"/>` }))];
      if (p.cap) keys.push({ name: p.cap.name, mark: `<line x1="0" y1="5" x2="14" y2="5" stroke="#555" stroke-dasharray="6,4"/>` });
      let lx = W - right;
      for (const k of keys.reverse()) {
        lx -= labelWidth(k.name, 12) + 18;
        parts.push(`<g transform="translate(${lx.toFixed(1)},${y0 - 18})">${k.mark}<text x="16" y="10">${esc(k.name)}</text></g>`);
      }
      if (pause && i === 0) {
        const text = `pause ${pause.ms} ms`;
        const w = labelWidth(text, 11);
        // Before the mark, else after it, else (a long pause) inside it: never past the plot's edges.
        const [lx, anchor] = pause.xa - 4 - w >= left ? [pause.xa - 4, "end"] : pause.xb + 4 + w <= W - right ? [pause.xb + 4, "start"] : [pause.xa + 4, "start"];
        parts.push(`<text x="${lx.toFixed(1)}" y="${y0 + 14}" text-anchor="${anchor}" font-size="11" fill="#d62728" stroke="white" stroke-width="3" paint-order="stroke">${esc(text)}</text>`);
      }
    });
    const yAxis = top + panels.length * (panelH + gap) - gap + 16;
    const secs = (t1 - t0) / 1000;
    const step = niceStep(secs);
    for (let s = 0; s <= secs + 1e-9; s += step) parts.push(`<text x="${x(t0 + s * 1000).toFixed(1)}" y="${yAxis}" text-anchor="middle">${+s.toFixed(1)} s</text>`);
    if (pause) parts.push(`<text x="${W - right}" y="${yAxis + 18}" fill="#d62728" text-anchor="end">pause (fence → verified, shaded): ${pause.ms} ms${pause.widened ? `, drawn ${MIN_PAUSE_PX} px wide` : ""}</text>`);
    parts.push("</svg>");
    return parts.join("\n");
  }

  html(title: string, metrics: Record<string, unknown>): string {
    // A figure made of parts (the downtime's, a disk's) as JSON, not "[object Object]".
    const rows = Object.entries(metrics).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(typeof v === "object" && v !== null ? JSON.stringify(v) : String(v))}</td></tr>`).join("");
    return `<!doctype html><meta charset="utf-8"><title>${esc(title)}</title><body style="font-family:sans-serif">${this.svg(title)}<table>${rows}</table></body>`;
  }
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function fmtTick(v: number): string {
  return String(+v.toPrecision(4));
}

function niceStep(total: number): number {
  for (const s of [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]) if (total / s <= 10) return s;
  return 7200;
}
