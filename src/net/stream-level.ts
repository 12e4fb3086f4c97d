// The level of the bulk's long-window stream (zstd-stream.ts), held against the adaptive
// policy's unit-by-unit moves. zstd fixes a frame's level, so another level is another
// frame, and a new frame starts with an empty window: what the stream could refer to (a
// library's first copy 20 MiB back) is lost. Measured on a 64 MiB disk holding 8 MiB of
// libraries twice: following the policy (1, 3, 6, 9 in turn) sent the second copy whole.
//
// So only the first piece's level is taken as provisional (the policy's opening guess: it
// probes every level on that piece, and knows them from the second on). After that the
// stream changes level only once the policy has asked for the same other level over as
// many bytes as the window spans: by then the old level has had what it could give.

const MiB = 1024 * 1024;
/** The window's span (2^25): a level asked for over this many bytes is taken. */
export const SWITCH_AFTER_BYTES = 32 * MiB;

export class StreamLevel {
  private level?: number;
  private pieces = 0;
  private asked?: { level: number; bytes: number };

  /** The level for the next piece, of `bytes`, when the policy asks for `wanted` (> 0). */
  next(wanted: number, bytes: number): number {
    this.pieces++;
    if (this.level === undefined || this.pieces === 2) this.take(wanted);
    else if (wanted === this.level) this.asked = undefined;
    else {
      if (this.asked?.level !== wanted) this.asked = { level: wanted, bytes: 0 };
      this.asked.bytes += bytes;
      if (this.asked.bytes >= SWITCH_AFTER_BYTES) this.take(wanted);
    }
    return this.level!;
  }

  /** Past its provisional first piece: the level moves only as described above. */
  get settled(): boolean {
    return this.pieces >= 2;
  }

  private take(level: number): void {
    this.level = level;
    this.asked = undefined;
  }
}
