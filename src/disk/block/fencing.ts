// After hand-off the source's disk must never change again: a second running copy of the
// VM, or a stray retry from the old one, would silently fork the disk. Fencing refuses
// every later write with EPERM; reads go on, so tools can still inspect the old image.
//
// It sits below the throttle on purpose: a write admitted before the fence but still
// waiting out its throttle delay is checked again when it is applied, and refused.

import { BackendDecorator, BlockError, type MaybePromise } from "./backend.ts";
import { NbdErr } from "./vocabulary.ts";
import type { Payload } from "./payload.ts";

export class FencingBackend extends BackendDecorator {
  fenced = false;
  refused = 0;

  fence(): void {
    this.fenced = true;
  }

  /** Only before the point of no return: a migration that failed earlier gives the disk back. */
  unfence(): void {
    this.fenced = false;
  }

  override write(offset: number, data: Payload, fua: boolean): MaybePromise<void> {
    this.check();
    return super.write(offset, data, fua);
  }
  override zero(offset: number, length: number, fua: boolean, mayPunch: boolean): MaybePromise<void> {
    this.check();
    return super.zero(offset, length, fua, mayPunch);
  }
  override trim(offset: number, length: number, fua: boolean): MaybePromise<void> {
    this.check();
    return super.trim(offset, length, fua);
  }

  private check(): void {
    if (this.fenced) {
      this.refused++;
      throw new BlockError(NbdErr.EPERM, "the image is fenced: this VM has moved to another host");
    }
  }
}
