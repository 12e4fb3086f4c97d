// One disk of a VM with several: its NBD export is a window [offset, offset + size) onto the
// VM's one block path (image-set.ts), so its writes go through the same throttle, fence and
// delta log as every other disk's, in arrival order. The NBD layer checks every request
// against the export's size before it gets here, so a guest cannot reach another disk.

import { BackendDecorator, type BlockBackend, type MaybePromise } from "../block/backend.ts";
import type { Extent } from "../block/vocabulary.ts";
import type { Payload } from "../block/payload.ts";

export class ExportWindow extends BackendDecorator {
  constructor(
    inner: BlockBackend,
    private readonly offset: number,
    private readonly length: number,
  ) {
    super(inner);
  }
  override get size() {
    return this.length;
  }
  override read(offset: number, into: Uint8Array): void {
    this.inner.read(this.offset + offset, into);
  }
  override write(offset: number, data: Payload, fua: boolean): MaybePromise<void> {
    return this.inner.write(this.offset + offset, data, fua);
  }
  override zero(offset: number, length: number, fua: boolean, mayPunch: boolean): MaybePromise<void> {
    return this.inner.zero(this.offset + offset, length, fua, mayPunch);
  }
  override trim(offset: number, length: number, fua: boolean): MaybePromise<void> {
    return this.inner.trim(this.offset + offset, length, fua);
  }
  override extents(offset: number, length: number, max?: number): Extent[] {
    return this.inner.extents(this.offset + offset, length, max);
  }
  /** The VM's block path is closed once, by its service, not by each disk's window. */
  override close(): void {}
}
