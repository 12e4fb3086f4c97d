// A VM's disks as one address space for its migration: disk0's bytes, then disk1's, and so on,
// with no gaps. Everything that moves or checks a VM's storage (the delta log, the bulk copy,
// the digest, the fence, the throttle) works on that one space, so a VM with several disks
// has exactly the guarantees of a VM with one:
//  - one delta log holds the writes of every disk in the order the serve applied them, so
//    the destination's disks are always, together, a state the source's disks were in;
//  - one fence stops every disk in the same turn (the point of no return is one instant);
//  - one recording starts on every disk in the same turn, before any bulk byte is read.
// The NBD exports (disk0, disk1, ...) are windows onto it (export-window.ts); nothing a guest
// sends can reach past its own disk's window.
//
// One image is opened as its FileBackend itself: no layer on the one-disk path.

import { statSync } from "node:fs";
import { BlockError, type BlockBackend } from "../block/backend.ts";
import type { Extent } from "../block/vocabulary.ts";
import { FileBackend } from "./file-backend.ts";
import { NbdErr } from "../block/vocabulary.ts";
import { type Payload, payloadLength, slicePayload } from "../block/payload.ts";
import type { PageCacheOps } from "./write-behind.ts";

/** One image path, or a VM's image paths in disk order. */
export type ImageRef = string | readonly string[];

export function imagePaths(ref: ImageRef): readonly string[] {
  return typeof ref === "string" ? [ref] : ref;
}

/** For messages: the path, or "A + B". */
export function describeImages(ref: ImageRef): string {
  return imagePaths(ref).join(" + ");
}

/** Hole tests for a reader moving forward (extents.ts HoleFinder). */
export interface HoleTests {
  isHole(offset: number, length: number): boolean;
  forget(): void;
  dataFrom(offset: number): number;
}

/** What the migration needs of a VM's storage: the block path, plus hole tests and the page cache. */
export interface ImageFile extends BlockBackend {
  holeFinder(): HoleTests;
  pageCache(): PageCacheOps;
}

/** Where each disk lies in the VM's space. */
export interface DiskPlace {
  index: number;
  image: string;
  offset: number;
  size: number;
}

export function placeDisks(paths: readonly string[], sizes: readonly number[]): DiskPlace[] {
  let offset = 0;
  return paths.map((image, index) => {
    const place = { index, image, offset, size: sizes[index]! };
    offset += place.size;
    return place;
  });
}

/** The sizes of existing image files, in order (an error names the file that is missing). */
export function imageSizes(ref: ImageRef): number[] {
  return imagePaths(ref).map((p) => statSync(p).size);
}

/** Opens one image as itself, several as their concatenation. */
export function openImage(ref: ImageRef, readOnly: boolean): ImageFile {
  const paths = imagePaths(ref);
  if (paths.length === 1) return new FileBackend(paths[0]!, readOnly);
  const files: FileBackend[] = [];
  try {
    for (const p of paths) files.push(new FileBackend(p, readOnly));
  } catch (err) {
    for (const f of files) f.close();
    throw err;
  }
  return new ImageSet(files, readOnly);
}

interface Part {
  file: FileBackend;
  offset: number;
  end: number;
}

export class ImageSet implements ImageFile {
  readonly size: number;
  private readonly parts: Part[];

  constructor(
    files: FileBackend[],
    readonly readOnly: boolean,
  ) {
    let offset = 0;
    this.parts = files.map((file) => {
      const part = { file, offset, end: offset + file.size };
      offset = part.end;
      return part;
    });
    this.size = offset;
  }

  /** The part that holds all of [offset, offset + length), or undefined when the range crosses parts (or leaves the VM's space). */
  private within(offset: number, length: number): Part | undefined {
    for (const part of this.parts) if (offset >= part.offset && offset + length <= part.end) return part;
    return undefined;
  }

  /** Calls `fn` for each part [offset, offset + length) touches, with the part's own offset and the range's position. */
  private each(offset: number, length: number, fn: (file: FileBackend, at: number, from: number, to: number, index: number) => void): Part[] {
    if (offset < 0 || offset + length > this.size) throw new BlockError(NbdErr.EINVAL, `range ${offset}+${length} is outside the VM's disks (${this.size} bytes)`);
    const touched: Part[] = [];
    for (const [index, part] of this.parts.entries()) {
      const start = Math.max(offset, part.offset);
      const end = Math.min(offset + length, part.end);
      if (start >= end) {
        if (part.offset >= offset + length) break;
        continue;
      }
      touched.push(part);
      fn(part.file, start - part.offset, start - offset, end - offset, index);
    }
    return touched;
  }

  // An NBD request never crosses a disk (its export's window is one disk): it goes straight
  // to that disk's file, with nothing allocated. Only the migration's own ranges (a bulk
  // chunk, a copy pass) may cross a boundary.
  read(offset: number, into: Uint8Array): void {
    const part = this.within(offset, into.length);
    if (part) return part.file.read(offset - part.offset, into);
    this.each(offset, into.length, (file, at, from, to) => file.read(at, into.subarray(from, to)));
  }

  write(offset: number, data: Payload, fua: boolean): void | Promise<void> {
    const length = payloadLength(data);
    const part = this.within(offset, length);
    if (part) return part.file.write(offset - part.offset, data, fua);
    const touched = this.each(offset, length, (file, at, from, to) => void file.write(at, slicePayload(data, from, to), false));
    if (fua) return flushAll(touched);
  }

  zero(offset: number, length: number, fua: boolean, mayPunch: boolean): void | Promise<void> {
    const touched = this.each(offset, length, (file, at, from, to) => void file.zero(at, to - from, false, mayPunch));
    if (fua) return flushAll(touched);
  }

  trim(offset: number, length: number, fua: boolean): void | Promise<void> {
    return this.zero(offset, length, fua, true);
  }

  flush(): Promise<void> {
    return flushAll(this.parts);
  }

  extents(offset: number, length: number, max = 1024): Extent[] {
    const out: Extent[] = [];
    this.each(offset, length, (file, at, from, to) => {
      for (const e of file.extents(at, to - from, max)) {
        const last = out[out.length - 1];
        if (last && last.hole === e.hole) last.length += e.length;
        else out.push({ ...e });
      }
    });
    return out.slice(0, max);
  }

  holeFinder(): HoleTests {
    const finders = this.parts.map((p) => p.file.holeFinder());
    const parts = this.parts;
    const partAt = (offset: number) => {
      let i = 0;
      while (i < parts.length - 1 && parts[i]!.end <= offset) i++;
      return i;
    };
    return {
      isHole: (offset, length) => {
        if (length === 0) return true;
        let hole = true;
        this.each(offset, length, (_file, at, from, to, i) => {
          if (hole) hole = finders[i]!.isHole(at, to - from);
        });
        return hole;
      },
      forget: () => finders.forEach((f) => f.forget()),
      dataFrom: (offset) => {
        for (let i = partAt(offset); i < parts.length; i++) {
          const p = parts[i]!;
          const at = finders[i]!.dataFrom(Math.max(0, offset - p.offset));
          if (at < p.end - p.offset) return p.offset + at;
        }
        return this.size;
      },
    };
  }

  pageCache(): PageCacheOps {
    const caches = this.parts.map((p) => p.file.pageCache());
    const on = (op: keyof PageCacheOps) => (offset: number, length: number) =>
      void this.each(offset, Math.min(length, this.size - offset), (_f, at, from, to, i) => caches[i]![op](at, to - from));
    return { startWriteback: on("startWriteback"), writeBackAndDrop: on("writeBackAndDrop") };
  }

  close(): void {
    for (const p of this.parts) p.file.close();
  }
}

async function flushAll(parts: readonly Part[]): Promise<void> {
  await Promise.all(parts.map((p) => p.file.flush()));
}
