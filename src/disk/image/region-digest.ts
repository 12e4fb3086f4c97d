// The end-to-end check of a migration, at a cost that does not grow with the image.
//
// The image digest is SHA-256 over the hashes of its 1 MiB regions, in order; a region's
// hash is SHA-256 over the 64-bit XXH3 of each of its 4 KiB pieces. Both sides keep the
// region hashes as the migration goes: a region is hashed once when the bulk copy has
// passed it (the source hashes what it read, the destination reads back what it wrote),
// and again whenever a delta touches it. So at the hand-off only what the last deltas
// touched is read, and the downtime no longer holds a whole-image hash (a 512 MiB image
// took ~0.7 s to hash; a 100 GiB one would take minutes).
//
// Why two levels: a 4 KiB write dirties a region; rehashing the whole 1 MiB for it would
// cost 256 times the write, and a random writer would outrun the hashing. Once a region
// has been dirtied, its piece hashes are kept, and only the dirty pieces are read again.
// Pieces are 4 KiB, the guest's own write size, so a rehash reads what was written and no
// more: the hand-off's digest work grows with the bytes written, not with how scattered
// they are (with 64 KiB pieces, each scattered 4 KiB write cost 64 KiB at both ends).
// Pieces are kept for dirtied regions only (2 KiB each), capped.
//
// Why sparse: thin disks of several TiB holding little are common, and a hash per MiB of
// virtual size was 256 MiB of memory at 8 TiB, hashed whole at the hand-off (163 ms of an
// 8 TiB disk's 168 ms of downtime, 450 MB of RSS, with 24 MiB of data). Only regions that
// are not all zeros keep a hash; a bit per region says whether what is known of it is
// current (1 MiB of bits for 8 TiB). The digest is SHA-256 over the image's size and the
// hashes of its groups of 1024 regions (1 GiB) that hold data, each group's hash over the
// numbers and hashes of its regions that hold data; a group is hashed again only when one
// of its regions changed. So the hand-off's digest costs the groups written since the last
// one, and a zero region in one image against data in the other still differs.
//
// Why XXH3 for the pieces, not SHA-256: this digest catches a copy that went wrong (a lost,
// misplaced or reordered write, a bug of ours), where a 64-bit hash misses one difference
// in 2^64. It is no defence against someone on the path, who could rewrite the digests as
// well as the data; what stops them is the link's own authentication. SHA-256 of every
// byte, at both ends, was the destination's largest cost on a loopback migration (22 %):
// 0.54 ms/MiB here in 4 KiB pieces, XXH3 0.027.
//
// Why a stale hash cannot hide a difference: at the source every write after record mode
// began is in the delta log, and every record read from the log marks its pieces dirty; a
// piece is rehashed from the image *after* it was marked, so any write that reached the
// image later is logged later and marks it again. The destination's image is written only
// by the receiver, which marks what it writes.

import { type HoleTests, type ImageFile, type ImageRef, describeImages, openImage } from "./image-set.ts";
import { isZero } from "../../util/zero.ts";

export const REGION_SIZE = 1024 * 1024;
export const PIECE_SIZE = 4096;
const PIECES = REGION_SIZE / PIECE_SIZE;
const PIECE_HASH_LEN = 8;
/** Regions per group of the digest's tree (1 GiB). */
const GROUP_LOG = 10;
/** Regions whose piece hashes are kept (2 KiB each): 64 MiB at most. */
const MAX_KEPT_REGIONS = 32768;

const sha256 = (data: Uint8Array): Uint8Array => Bun.SHA256.hash(data) as Uint8Array;

const viewOf = (pieces: Uint8Array) => new DataView(pieces.buffer, pieces.byteOffset, pieces.byteLength);

/** Piece `p`'s hash into its slot of a region's piece hashes (`pieces`: a view of them). */
function hashPiece(pieces: DataView, p: number, data: Uint8Array): void {
  pieces.setBigUint64(p * PIECE_HASH_LEN, Bun.hash.xxHash3(data));
}

/** A region's dirty pieces, one bit each. */
type PieceMask = Uint8Array;
const newMask = (): PieceMask => new Uint8Array(PIECES / 8);
const isSet = (m: PieceMask, p: number) => (m[p >> 3]! & (1 << (p & 7))) !== 0;

function popcount8(b: number): number {
  let n = 0;
  for (; b; b &= b - 1) n++;
  return n;
}

function popcount(m: PieceMask): number {
  let n = 0;
  for (let b of m) for (; b; b &= b - 1) n++;
  return n;
}

export class RegionDigests {
  /** Hashes of the regions that are not all zeros. A current region without one is all zeros. */
  private readonly hashes = new Map<number, Uint8Array>();
  /**
   * A bit per region, 1 = what is stored of it is current. Cleared by markDirty, set by
   * hashing. A region neither current nor dirty was never hashed, so has no hash stored.
   */
  private readonly current: Uint8Array;
  /** Regions not current: none, and the hand-off's refresh and digest need not look for any. */
  private stale: number;
  /** Hashes of the groups holding data, and the groups whose hash is out of date. */
  private readonly groupHashes = new Map<number, Uint8Array>();
  private readonly staleGroups = new Set<number>();
  /** Dirty regions, each with a bit per dirty piece. */
  private readonly dirty = new Map<number, PieceMask>();
  /** Bytes read and time spent by rehashes, for the hand-off's cost estimate. */
  private hashedBytes = 0;
  private hashingMs = 0;
  /** Piece hashes of regions dirtied before, so the next rehash reads only dirty pieces. */
  private readonly pieces = new Map<number, Uint8Array>();
  readonly regions: number;
  /** One read buffer for every rehash (they run one at a time): no 1 MiB of garbage per region. */
  private readonly readBuf = Buffer.allocUnsafe(REGION_SIZE);

  constructor(readonly size: number) {
    this.regions = Math.ceil(size / REGION_SIZE);
    this.current = new Uint8Array(Math.ceil(this.regions / 8));
    this.stale = this.regions;
  }

  private isCurrent(r: number): boolean {
    return (this.current[r >> 3]! & (1 << (r & 7))) !== 0;
  }

  private setCurrent(r: number, on: boolean): void {
    if (this.isCurrent(r) === on) return;
    if (on) this.current[r >> 3]! |= 1 << (r & 7);
    else this.current[r >> 3]! &= ~(1 << (r & 7));
    this.stale += on ? -1 : 1;
  }

  /** The first region in [from, to) that is not current, or `to`; whole bytes of current regions are skipped at once. */
  private nextStale(from: number, to: number): number {
    for (let r = from; r < to; ) {
      if ((r & 7) === 0 && this.current[r >> 3] === 0xff) r += 8;
      else if (!this.isCurrent(r)) return r;
      else r++;
    }
    return to;
  }

  /** Regions [from, to) become current, all zeros: none of them has a hash stored (never hashed, not dirty). */
  private setZeroRun(from: number, to: number): void {
    let r = from;
    for (; r < to && (r & 7) !== 0; r++) this.setCurrent(r, true);
    for (; r + 8 <= to; r += 8) {
      this.stale -= 8 - popcount8(this.current[r >> 3]!);
      this.current[r >> 3] = 0xff;
    }
    for (; r < to; r++) this.setCurrent(r, true);
  }

  regionLength(region: number): number {
    return Math.min(REGION_SIZE, this.size - region * REGION_SIZE);
  }

  /** Hashes of the regions lying wholly inside `data`, which was read at `offset`. */
  noteData(offset: number, data: Uint8Array): void {
    const first = Math.ceil(offset / REGION_SIZE);
    for (let r = first; r < this.regions; r++) {
      const start = r * REGION_SIZE - offset;
      const len = this.regionLength(r);
      if (start + len > data.length) break;
      this.storeRegion(r, data.subarray(start, start + len), false);
    }
  }

  markDirty(offset: number, length: number): void {
    if (length <= 0) return;
    const end = Math.min(offset + length, this.size);
    for (let r = Math.floor(offset / REGION_SIZE); r * REGION_SIZE < end; r++) {
      const base = r * REGION_SIZE;
      const firstPiece = Math.max(0, Math.floor((offset - base) / PIECE_SIZE));
      const lastPiece = Math.min(PIECES - 1, Math.floor((end - 1 - base) / PIECE_SIZE));
      let mask = this.dirty.get(r);
      if (!mask) this.dirty.set(r, (mask = newMask()));
      for (let p = firstPiece; p <= lastPiece; p++) mask[p >> 3]! |= 1 << (p & 7);
      this.setCurrent(r, false);
    }
  }

  /**
   * Bytes the next refresh() would read for what was marked so far: the dirty pieces of
   * regions whose pieces are kept, whole regions otherwise (not counting `all`).
   */
  pendingBytes(): number {
    let n = 0;
    for (const [r, mask] of this.dirty) n += this.pieces.has(r) ? popcount(mask) * PIECE_SIZE : this.regionLength(r);
    return n;
  }

  /** Measured rehash speed, bytes per ms (undefined before enough was hashed to tell). */
  hashRate(): number | undefined {
    return this.hashedBytes >= 4 * REGION_SIZE && this.hashingMs > 0 ? this.hashedBytes / this.hashingMs : undefined;
  }

  /** Regions whose hash is not current (never hashed, or written since). */
  staleCount(): number {
    return this.stale;
  }

  /**
   * Rehashes what was marked dirty so far (cheap: only those pieces), or with `all`, also
   * every region never hashed (those no bulk chunk covered whole). Returns regions hashed.
   */
  refresh(image: ImageRef, opts: { all?: boolean } = {}): number {
    return this.withImage(image, (file, holes) => {
      let n = 0;
      for (const r of [...this.dirty.keys()]) this.rehash(file, holes, r), n++;
      if (opts.all) n += this.hashStale(file, holes, 0, this.regions);
      return n;
    });
  }

  /** Reads and hashes regions [from, to) whose hash is not current (the destination, behind its bulk copy). */
  hashRange(image: ImageRef, from: number, to: number): number {
    return this.withImage(image, (file, holes) => this.hashStale(file, holes, from, Math.min(to, this.regions)));
  }

  private withImage(image: ImageRef, work: (file: ImageFile, holes: HoleTests) => number): number {
    const t0 = performance.now();
    const file = openImage(image, true);
    try {
      if (file.size < this.size) throw new Error(`short read in ${describeImages(image)}: ${file.size} bytes, not ${this.size}`);
      return work(file, file.holeFinder());
    } finally {
      file.close();
      this.hashingMs += performance.now() - t0;
    }
  }

  /**
   * The regions in [from, to) not current. A run of whole regions in a hole is taken at once
   * (one question to the file system, a byte of bits per 8 regions): a thin disk's digest
   * costs its data, not its virtual size.
   */
  private hashStale(file: ImageFile, holes: HoleTests, from: number, to: number): number {
    let n = 0;
    if (this.stale === 0) return 0;
    for (let r = this.nextStale(from, to); r < to; r = this.nextStale(r + 1, to)) {
      const at = r * REGION_SIZE;
      if (!this.dirty.has(r) && this.regionLength(r) === REGION_SIZE) {
        const holeEnd = Math.min(to, Math.floor(Math.min(holes.dataFrom(at), this.size) / REGION_SIZE));
        if (holeEnd > r) {
          this.setZeroRun(r, holeEnd);
          for (const d of this.dirty.keys()) if (d >= r && d < holeEnd) this.setCurrent(d, false); // hashed on their own
          n += holeEnd - r;
          r = holeEnd - 1;
          continue;
        }
      }
      this.rehash(file, holes, r);
      n++;
    }
    return n;
  }

  private rehash(file: ImageFile, holes: HoleTests, r: number): void {
    const buf = this.readBuf;
    const read = (at: number, len: number) => {
      const piece = buf.subarray(0, len);
      file.read(at, piece);
      this.hashedBytes += len;
      return piece;
    };
    const mask = this.dirty.get(r);
    this.dirty.delete(r);
    const kept = this.pieces.get(r);
    if (kept && mask) {
      const view = viewOf(kept);
      for (let p = 0; p < PIECES; p++) {
        if (!isSet(mask, p)) continue;
        const at = r * REGION_SIZE + p * PIECE_SIZE;
        if (at >= this.size) break;
        hashPiece(view, p, read(at, Math.min(PIECE_SIZE, this.size - at)));
      }
      this.setRegionHash(r, sha256(kept.subarray(0, this.pieceCount(r) * PIECE_HASH_LEN)));
    } else if (this.regionLength(r) === REGION_SIZE && holes.isHole(r * REGION_SIZE, REGION_SIZE)) {
      // A hole reads as zeros: no need to read it (a thin disk's digest costs its data).
      this.setRegionHash(r, zeroRegionHash());
      if (mask) this.keepPieces(r, zeroPieces().slice());
    } else {
      // A first rehash reads the whole region and keeps its pieces for the next ones.
      this.storeRegion(r, read(r * REGION_SIZE, this.regionLength(r)), mask !== undefined);
    }
  }

  /** The image digest; every region must be current (call refresh({all: true}) first). */
  digest(): string {
    if (this.stale > 0) throw new Error(`region ${this.nextStale(0, this.regions)} has no current hash`);
    for (const g of this.staleGroups) this.hashGroup(g);
    this.staleGroups.clear();
    const h = new Bun.CryptoHasher("sha256");
    const word = Buffer.alloc(8);
    word.writeBigUInt64BE(BigInt(this.size));
    h.update(word);
    for (const g of [...this.groupHashes.keys()].sort((a, b) => a - b)) {
      word.writeBigUInt64BE(BigInt(g));
      h.update(word);
      h.update(this.groupHashes.get(g)!);
    }
    return h.digest("hex");
  }

  /** A group's hash over its regions that hold data (their numbers in the group, and hashes); none: no hash. */
  private hashGroup(g: number): void {
    const h = new Bun.CryptoHasher("sha256");
    const index = Buffer.alloc(4);
    let any = false;
    for (let r = g << GROUP_LOG, end = Math.min(this.regions, (g + 1) << GROUP_LOG); r < end; r++) {
      const hash = this.hashes.get(r);
      if (!hash) continue;
      index.writeUInt32BE(r - (g << GROUP_LOG));
      h.update(index);
      h.update(hash);
      any = true;
    }
    if (any) this.groupHashes.set(g, h.digest() as Uint8Array);
    else this.groupHashes.delete(g);
  }

  private pieceCount(region: number): number {
    return Math.ceil(this.regionLength(region) / PIECE_SIZE);
  }

  private storeRegion(region: number, data: Uint8Array, keepPieces: boolean): void {
    // All-zero regions (holes, mostly) are common and their hash is a constant.
    if (!keepPieces && data.length === REGION_SIZE && isZero(data)) {
      this.setRegionHash(region, zeroRegionHash());
      return;
    }
    const n = this.pieceCount(region);
    const pieces = new Uint8Array(n * PIECE_HASH_LEN);
    const view = viewOf(pieces);
    for (let p = 0; p < n; p++) hashPiece(view, p, data.subarray(p * PIECE_SIZE, Math.min((p + 1) * PIECE_SIZE, data.length)));
    this.setRegionHash(region, sha256(pieces));
    if (keepPieces) this.keepPieces(region, pieces);
  }

  private keepPieces(region: number, pieces: Uint8Array): void {
    if (this.pieces.size >= MAX_KEPT_REGIONS) this.pieces.delete(this.pieces.keys().next().value!);
    this.pieces.set(region, pieces);
  }

  private setRegionHash(region: number, hash: Uint8Array): void {
    const old = this.hashes.get(region);
    if (hash === zeroHash || sameBytes(hash, zeroRegionHash())) {
      if (old) this.hashes.delete(region), this.staleGroups.add(region >> GROUP_LOG);
    } else if (!old || !sameBytes(old, hash)) {
      this.hashes.set(region, hash);
      this.staleGroups.add(region >> GROUP_LOG);
    }
    this.setCurrent(region, true);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

let zeroPieceHashes: Uint8Array | undefined;
let zeroHash: Uint8Array | undefined;
/** The piece hashes of an all-zero region (shared: copy before changing). */
function zeroPieces(): Uint8Array {
  if (!zeroPieceHashes) {
    const zeros = new Uint8Array(PIECE_SIZE);
    zeroPieceHashes = new Uint8Array(PIECES * PIECE_HASH_LEN);
    const view = viewOf(zeroPieceHashes);
    for (let p = 0; p < PIECES; p++) hashPiece(view, p, zeros);
  }
  return zeroPieceHashes;
}
function zeroRegionHash(): Uint8Array {
  zeroHash ??= sha256(zeroPieces());
  return zeroHash;
}

/** The digest of a whole image read from disk (tests and tools; the same value as RegionDigests). */
export function imageDigest(image: ImageRef, size: number): string {
  const d = new RegionDigests(size);
  d.refresh(image, { all: true });
  return d.digest();
}
