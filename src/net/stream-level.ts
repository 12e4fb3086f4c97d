// The level of the bulk's long-window stream (zstd-stream.ts), held against the adaptive
// policy's unit-by-unit moves. zstd fixes a frame's level, so another level is another
// frame, and a new frame starts with an empty window: what the stream could refer to (a
// library's first copy 20 MiB back) is lost. Measured on a 64 MiB disk holding 8 MiB of
// libraries twice: following the policy (1, 3, 6, 9 in turn) sent the second copy whole.
//
// So the level is provisional until the policy has measured the levels (`informed`): the
// pieces before follow its guesses, and the first piece it makes informed settles the level.
// After that the stream changes level only once the policy has asked for the same other level
// over as many bytes as the window spans: by then the old level has had what it could give.
// Informed was once taken for granted from the second piece on (the first was probed inline),
// but through real TCP the first units fit in the socket's buffer, do not wait, and are probed
// in the background: the stream settled at the opening guess, level 1, and a 5 Mbit/s WAN
// sent 34 MiB where level 19 sends 30 (1.23 × the zstd -19 limit). MAX_PROVISIONAL bounds the
// wait for a policy that never measures every level.

const MiB = 1024 * 1024;
/** The window's span (2^25): a level asked for over this many bytes is taken. */
export const SWITCH_AFTER_BYTES = 32 * MiB;

/** Pieces at most before the level settles, informed or not. */
const MAX_PROVISIONAL = 8;

export class StreamLevel {
  private level?: number;
  private pieces = 0;
  private provisional = true;
  private asked?: { level: number; bytes: number };

  /**
   * The level for the next piece, of `bytes`, when the policy asks for `wanted` (> 0);
   * `informed`: the policy has measured the levels it chooses among (by default, from the
   * second piece on).
   */
  next(wanted: number, bytes: number, informed = this.pieces >= 1): number {
    this.pieces++;
    if (this.provisional) {
      this.take(wanted);
      this.provisional = !informed && this.pieces < MAX_PROVISIONAL;
    } else if (wanted === this.level) this.asked = undefined;
    else {
      if (this.asked?.level !== wanted) this.asked = { level: wanted, bytes: 0 };
      this.asked.bytes += bytes;
      if (this.asked.bytes >= SWITCH_AFTER_BYTES) this.take(wanted);
    }
    return this.level!;
  }

  /** Past its provisional pieces: the level moves only as described above. */
  get settled(): boolean {
    return !this.provisional;
  }

  private take(level: number): void {
    this.level = level;
    this.asked = undefined;
  }
}
