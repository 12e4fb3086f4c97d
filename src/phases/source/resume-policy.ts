// When the source tries again after a broken link (before the fence). A link between data
// centres can be gone for tens of seconds (a router's reboot, a path's failover): the source
// keeps trying, more slowly each time up to a pause of a few seconds, for RESUME_WINDOW_MS
// from the first failure, and a connection that shakes hands starts the count over. A cut of
// 30 s therefore resumes within a few seconds of the link's return, and a destination that is
// gone for good is given up on after a minute.
//
// A destination never reached at all is another matter: most often a wrong port, or a dest not
// started yet. The operator hears of it after FIRST_CONNECT_WINDOW_MS (six tries), as before
// the window grew, not after a minute.

/** The first pause, doubled after each failed try, up to MAX_PAUSE_MS. */
const FIRST_PAUSE_MS = 250;
const MAX_PAUSE_MS = 4000;
/** Failed tries in a row are given up on once the first of them is this old. */
export const RESUME_WINDOW_MS = 60_000;
/** The same, while no connection has ever shaken hands. */
export const FIRST_CONNECT_WINDOW_MS = 15_000;
/** Even a link that always comes back is given up on after this many resumes in one migration. */
const MAX_RESUMES = 100;

export class ResumePolicy {
  private failingSince?: number;
  private inARow = 0;
  private total = 0;
  private everConnected = false;

  /** The link broke (or a try to reconnect failed) at `now`: the pause before the next try, or undefined to give up. */
  broke(now: number): number | undefined {
    this.failingSince ??= now;
    if (this.total >= MAX_RESUMES) return undefined;
    const pause = Math.min(MAX_PAUSE_MS, FIRST_PAUSE_MS * 2 ** this.inARow);
    const window = this.everConnected ? RESUME_WINDOW_MS : FIRST_CONNECT_WINDOW_MS;
    if (now + pause - this.failingSince > window) return undefined;
    this.inARow++;
    this.total++;
    return pause;
  }

  /** A new connection shook hands: the next failure starts a new window. */
  connected(): void {
    this.everConnected = true;
    this.failingSince = undefined;
    this.inARow = 0;
  }
}
