// The migration's timeline as a picture, like the paper's figures: throughput of the bulk
// copy and of the deltas, the delta queue, the throttle level, the phases, and the pause
// (fence to the destination's verified image) marked. Built from the same events
// `--json` prints, each stamped as it happens; drawn as one self-contained SVG (or an
// HTML page holding it and the final figures).

type Event = Record<string, unknown>;
export interface Point {
  t: number;
  v: number;
}

export class Timeline {
  private readonly events: { t: number; e: Event }[] = [];
  private readonly counters: { label: string; name: string; samples: Point[] }[] = [];

  /** `t`: when it happened (wall clock, ms), if not now: a migration's events read back from its log. */
  add(e: Event, t = Date.now()): void {
    this.events.push({ t, e });
  }

  /** A panel below the migration's: a cumulative count (a client's answers, say) drawn as a rate per second. */
  addCounter(label: string, name: string, samples: Point[]): void {
    this.counters.push({ label, name, samples });
  }

  /**
   * A cumulative counter turned into a rate (per second) over fixed windows: events come
   * in bursts (a chunk sent, a pump), and rates between two close events would show
   * spikes the link never carried.
   */
  private rate(samples: Point[], from: number, to: number): Point[] {
    if (samples.length < 1) return [];
    const w = Math.max(250, (to - from) / 120);
    const at = (t: number) => {
      let v = 0;
      for (const s of samples) if (s.t <= t) v = s.v;
      return v;
    };
    const out: Point[] = [];
    for (let t = Math.max(from, samples[0]!.t - w); t < to; t += w) out.push({ t: t + w, v: Math.max(0, (at(t + w) - at(t)) / (w / 1000)) });
    return out;
  }

  private series(event: string, phase: string | undefined, key: string): Point[] {
    return this.events.filter(({ e }) => e.event === event && (phase === undefined || e.phase === phase) && typeof e[key] === "number").map(({ t, e }) => ({ t, v: e[key] as number }));
  }

  svg(title: string): string {
    // A counter's samples (a client's, from before the migration to after it) widen the span.
    const counted = this.counters.flatMap((c) => c.samples.map((p) => p.t));
    const t0 = Math.min(this.events[0]?.t ?? Date.now(), ...counted);
    const t1 = Math.max(t0 + 1, ...this.events.map((x) => x.t), ...counted);
    const phases = this.events.filter(({ e }) => e.event === "phase").map(({ t, e }) => ({ t: (e.at as number) ?? t, name: String(e.phase) }));
    const bulkStart = phases.find((p) => p.name === "bulk")?.t ?? t0;
    const deltasStart = phases.find((p) => p.name === "deltas")?.t;
    const bulk = this.rate([{ t: bulkStart, v: 0 }, ...this.series("progress", "bulk", "bytesSent")], t0, t1);
    const deltas = deltasStart === undefined ? [] : this.rate([{ t: deltasStart, v: 0 }, ...this.series("progress", "deltas", "deltaBytes")], deltasStart, t1);
    const queue = this.series("sample", undefined, "deltaQueue");
    const throttle = this.series("sample", undefined, "throttleLevel");
    const fence = phases.find((p) => p.name === "handoff")?.t;
    const done = this.events.find(({ e }) => e.event === "done")?.t;

    const W = 960;
    const left = 70;
    const right = 20;
    const panelH = 150;
    const gap = 40;
    const top = 64;
    const x = (t: number) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
    const panels = [
      { label: "throughput (MiB/s)", lines: [{ pts: bulk, color: "#1f77b4", name: "bulk" }, { pts: deltas, color: "#d62728", name: "deltas" }], scale: 1 / (1 << 20) },
      { label: "delta queue (writes recorded, not yet shipped)", lines: [{ pts: queue, color: "#9467bd", name: "queued" }], scale: 1 },
      { label: "throttle level", lines: [{ pts: throttle, color: "#ff7f0e", name: "level" }], scale: 1 },
      ...this.counters.map((c) => ({ label: c.label, lines: [{ pts: this.rate(c.samples, t0, t1), color: "#2ca02c", name: c.name }], scale: 1 })),
    ];
    const H = top + panels.length * (panelH + gap) + 36;
    const parts: string[] = [
      `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
      `<rect width="${W}" height="${H}" fill="white"/>`,
      `<text x="${left}" y="24" font-size="16" font-weight="bold">${esc(title)}</text>`,
    ];
    panels.forEach((p, i) => {
      const y0 = top + i * (panelH + gap);
      const max = Math.max(1e-9, ...p.lines.flatMap((l) => l.pts.map((q) => q.v * p.scale)));
      const y = (v: number) => y0 + panelH - (v * p.scale / max) * panelH;
      parts.push(`<rect x="${left}" y="${y0}" width="${W - left - right}" height="${panelH}" fill="none" stroke="#999"/>`);
      parts.push(`<text x="${left}" y="${y0 - 6}" font-weight="bold">${esc(p.label)}</text>`);
      parts.push(`<text x="${left - 6}" y="${y0 + 10}" text-anchor="end">${fmt(max)}</text><text x="${left - 6}" y="${y0 + panelH}" text-anchor="end">0</text>`);
      if (fence !== undefined) parts.push(`<rect x="${x(fence)}" y="${y0}" width="${Math.max(2, x(done ?? t1) - x(fence))}" height="${panelH}" fill="#d62728" opacity="0.18"/>`);
      for (const ph of phases) parts.push(`<line x1="${x(ph.t)}" y1="${y0}" x2="${x(ph.t)}" y2="${y0 + panelH}" stroke="#bbb" stroke-dasharray="3,3"/>`);
      p.lines.forEach((l, k) => {
        if (l.pts.length) {
          // Steps: each rate holds from the previous sample to its own.
          let d = `M${x(l.pts[0]!.t).toFixed(1)},${y(0).toFixed(1)}`;
          let prev = l.pts[0]!.t;
          for (const q of l.pts) {
            d += ` L${x(prev).toFixed(1)},${y(q.v).toFixed(1)} L${x(q.t).toFixed(1)},${y(q.v).toFixed(1)}`;
            prev = q.t;
          }
          parts.push(`<path d="${d}" fill="none" stroke="${l.color}" stroke-width="1.6"/>`);
        }
        parts.push(`<rect x="${W - right - 120}" y="${y0 + 8 + k * 16}" width="10" height="10" fill="${l.color}"/><text x="${W - right - 104}" y="${y0 + 17 + k * 16}">${esc(l.name)}</text>`);
      });
    });
    const yAxis = top + panels.length * (panelH + gap) - gap + 16;
    for (const [i, ph] of phases.entries()) parts.push(`<text x="${x(ph.t) + 2}" y="${36 + (i % 2) * 10}" font-size="10" fill="#555">${esc(ph.name)}</text>`);
    const secs = (t1 - t0) / 1000;
    const step = niceStep(secs);
    for (let s = 0; s <= secs + 1e-9; s += step) parts.push(`<text x="${x(t0 + s * 1000)}" y="${yAxis}" text-anchor="middle">${+s.toFixed(1)} s</text>`);
    if (fence !== undefined) parts.push(`<text x="${x(fence) - 4}" y="${yAxis + 18}" fill="#d62728" text-anchor="end">pause (fence → verified, shaded): ${Math.round((done ?? t1) - fence)} ms</text>`);
    parts.push("</svg>");
    return parts.join("\n");
  }

  html(title: string, metrics: Record<string, unknown>): string {
    const rows = Object.entries(metrics).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(String(v))}</td></tr>`).join("");
    return `<!doctype html><meta charset="utf-8"><title>${esc(title)}</title><body style="font-family:sans-serif">${this.svg(title)}<table>${rows}</table></body>`;
  }
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function fmt(v: number): string {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

function niceStep(total: number): number {
  for (const s of [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]) if (total / s <= 10) return s;
  return 7200;
}
