// Whose fault is a guest that fails after its move (issue 33)? The paper bench holds the
// destination QEMU once QEMU reports its migration completed (-S, and the destination's
// hold before its `cont`), dumps guest RAM on both sides and compares it page by page, as
// the real-VM tests do (test/helpers/ram-check.ts). QEMU 7.2's TCG memory migration now and
// then loses a page under CPU starvation; a guest resumed with a stale page may oops. So a
// failure after a RAM mismatch is laid at QEMU's door; one with identical RAM is ours to
// explain (the disk, the hand-off, the tunnel).

import type { RamVerdict } from "../../../test/helpers/ram-check.ts";

export type Blame = "none" | "qemu" | "ours" | "unknown";

/** The verdict for a row: no failure; QEMU's (RAM differed); ours (RAM identical); unknown (no RAM check, or it failed). */
export function blame(guestFailures: readonly string[], ram: RamVerdict | undefined): Blame {
  if (guestFailures.length === 0) return "none";
  if (!ram) return "unknown";
  return ram.pagesDiffering > 0 ? "qemu" : "ours";
}

/** The row's error line for a failed guest, naming whose fault it is. */
export function blameText(b: Blame, ram: RamVerdict | undefined, firstFailure: string): string {
  if (b === "qemu") return `QEMU's: guest RAM differed at the switchover (${ram!.pagesDiffering} pages, first ${ram!.firstPages.slice(0, 3).join(", ")}), then the guest failed: ${firstFailure}`;
  if (b === "ours") return `the guest failed with its RAM identical at the switchover (ours to explain): ${firstFailure}`;
  return `the guest failed (no RAM check to tell whose fault): ${firstFailure}`;
}
