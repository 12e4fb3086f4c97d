// Sealed frames: after the handshake, every frame between source and destination is
// encrypted and authenticated (AES-256-GCM), so nobody on the path can read the disk or
// alter, replay, reorder or drop a frame unnoticed.
//
// Keys. Both ends already hold the shared secret and both handshake nonces (auth.ts). HKDF
// (SHA-256) over the secret, salted with both nonces, gives one key per direction: a
// session's keys are new with every connection (a resume too), and the two directions
// never share a key, so a frame reflected back to its sender does not open.
//
// Records. A sealed frame goes as [u32 length of ciphertext][ciphertext][16-byte tag], the
// length authenticated as associated data. The nonce is the record's number in its
// direction (a 64-bit counter, never sent): a record replayed, reordered or dropped opens
// with the wrong nonce and fails its tag, at once, at that record.
//
// Why AES-256-GCM: Bun's node:crypto here has no ChaCha20-Poly1305, and this CPU has
// AES-NI. Frames are sealed and opened in place (aes-gcm.ts): no buffer per frame.

import { hkdfSync } from "node:crypto";
import { ByteQueue } from "../util/byte-queue.ts";
import { type GcmKey, gcmKey, NONCE_LEN, TAG_LEN } from "./aes-gcm.ts";
import { FRAME_HEADER_LEN, FRAME_TRAILER_LEN, MAX_PAYLOAD } from "./protocol.ts";
import { ProtocolError } from "./errors.ts";

const LENGTH_LEN = 4;
/**
 * A record is at most the protocol's largest frame: a longer one is not ours. Not the pooled
 * frame buffer's size (a bulk frame's): a guest's write can be one NBD request of up to
 * 32 MiB, and its delta one frame (the paper bench's Bonnie writer sent one of 6.25 MiB).
 */
export const MAX_SEALED = FRAME_HEADER_LEN + MAX_PAYLOAD + FRAME_TRAILER_LEN;

export interface SessionKeys {
  /** Source to destination. */
  s2d: Buffer;
  /** Destination to source. */
  d2s: Buffer;
}

/** The keys of one connection, from the secret and the nonces both ends sent (hex). */
export function sessionKeys(secret: Uint8Array, sourceNonce: string, destNonce: string): SessionKeys {
  const salt = Buffer.from(`${sourceNonce}|${destNonce}`, "utf8");
  const key = (label: string) => Buffer.from(hkdfSync("sha256", secret, salt, `wanmig-v1 seal ${label}`, 32));
  return { s2d: key("source to destination"), d2s: key("destination to source") };
}

/** A frame failed its tag: altered, replayed, reordered, dropped, or sealed with another key. */
export class SealError extends ProtocolError {}

/** The record's nonce: its number in its direction. */
class Counter {
  private n = 0n;
  readonly nonce = Buffer.alloc(NONCE_LEN);

  get value(): bigint {
    return this.n;
  }

  /** The current record's nonce (valid until next()). */
  current(): Buffer {
    this.nonce.writeBigUInt64BE(this.n, 4);
    return this.nonce;
  }

  next(): void {
    this.n++;
  }
}

/** Seals the frames of one direction, in order. */
export class Sealer {
  private readonly counter = new Counter();
  private readonly key: GcmKey;

  constructor(key: Buffer, engine?: "native" | "node") {
    this.key = gcmKey(key, "seal", engine);
  }

  /**
   * Seals `frame` in place; returns the record's pieces, to be written in this order:
   * length, the frame (now ciphertext), tag.
   */
  seal(frame: Uint8Array): [Buffer, Uint8Array, Buffer] {
    const head = Buffer.allocUnsafe(LENGTH_LEN);
    head.writeUInt32BE(frame.length, 0);
    const tag = this.key.seal(this.counter.current(), head, frame);
    this.counter.next();
    return [head, frame, tag];
  }
}

/** Opens the records of one direction as they arrive, in order; any failure is final. */
export class Opener {
  private readonly counter = new Counter();
  private readonly queue = new ByteQueue();
  private readonly head = Buffer.alloc(LENGTH_LEN);
  private readonly tag = Buffer.alloc(TAG_LEN);
  private readonly key: GcmKey;

  /** `alloc`: where an opened frame goes (the frame decoder's pool). */
  constructor(
    key: Buffer,
    private readonly alloc: (n: number) => Buffer = Buffer.allocUnsafe,
    engine?: "native" | "node",
  ) {
    this.key = gcmKey(key, "open", engine);
  }

  /** The frames whose records are whole in what has arrived, opened in place, in order. */
  push(chunk: Uint8Array): Buffer[] {
    const q = this.queue;
    q.push(chunk);
    const out: Buffer[] = [];
    for (;;) {
      if (q.length < LENGTH_LEN) break;
      q.peekInto(this.head);
      const length = this.head.readUInt32BE(0);
      if (length > MAX_SEALED) throw new SealError(`sealed frame ${this.counter.value} claims ${length} bytes: the stream was altered, or the peer does not seal`);
      if (q.length < LENGTH_LEN + length + TAG_LEN) break;
      q.skip(LENGTH_LEN);
      const body = this.alloc(length);
      q.takeInto(body);
      q.takeInto(this.tag);
      if (!this.key.open(this.counter.current(), this.head, body, this.tag))
        throw new SealError(`sealed frame ${this.counter.value} failed authentication: it was altered, replayed, reordered or dropped on the way, or sealed with another key`);
      this.counter.next();
      out.push(body);
    }
    return out;
  }
}
