// The resume policy on a synthetic clock.
import { describe, expect, test } from "bun:test";
import { FIRST_CONNECT_WINDOW_MS, RESUME_WINDOW_MS, ResumePolicy } from "../src/phases/source/resume-policy.ts";

/** A policy whose connection shook hands once (a link that worked, then broke). */
function afterAConnection(): ResumePolicy {
  const p = new ResumePolicy();
  p.connected();
  return p;
}

/** Tries until the policy gives up, every try failing at once; returns the times of the tries. */
function triesUntilGivenUp(p: ResumePolicy, start = 0): number[] {
  const at: number[] = [];
  let now = start;
  for (;;) {
    const pause = p.broke(now);
    if (pause === undefined) return at;
    now += pause;
    at.push(now);
  }
}

describe("resume policy", () => {
  test("pauses double from 250 ms to 4 s, and the tries stop a minute after the first failure", () => {
    const at = triesUntilGivenUp(afterAConnection());
    expect(at.slice(0, 6)).toEqual([250, 750, 1750, 3750, 7750, 11750]);
    expect(at.at(-1)!).toBeLessThanOrEqual(RESUME_WINDOW_MS);
    expect(at.at(-1)!).toBeGreaterThan(RESUME_WINDOW_MS - 4000);
  });

  test("a destination never reached (a wrong port, a dest not started): given up within 15 s, six tries", () => {
    const at = triesUntilGivenUp(new ResumePolicy());
    expect(at).toEqual([250, 750, 1750, 3750, 7750, 11750]);
    expect(at.at(-1)!).toBeLessThanOrEqual(FIRST_CONNECT_WINDOW_MS);
  });

  test("a link down for 30 s: a try lands within 4 s of its return", () => {
    const at = triesUntilGivenUp(afterAConnection());
    const first = at.find((t) => t >= 30_000)!;
    expect(first - 30_000).toBeLessThanOrEqual(4000);
  });

  test("a connection that shook hands starts the window over", () => {
    const p = new ResumePolicy();
    for (let i = 0; i < 5; i++) p.broke(i * 1000);
    p.connected();
    expect(p.broke(100_000)).toBe(250);
  });

  test("a link that always comes back is still given up on after 100 resumes", () => {
    const p = new ResumePolicy();
    let n = 0;
    for (let now = 0; p.broke(now) !== undefined; now += 1000) {
      p.connected();
      n++;
    }
    expect(n).toBe(100);
  });
});
