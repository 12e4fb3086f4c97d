// AES-256-GCM on a frame's own buffer: the ciphertext (or plaintext) goes back where the
// input was, so a sealed frame travels in the pooled buffer it was built in and an opened
// one lands in the frame decoder's pool, with no buffer of its own per frame.
//
// Two engines. The system's libcrypto (OpenSSL 3) through FFI works in place. node:crypto
// (Bun's BoringSSL) hands every output back in a new buffer, which we copy into place: on a
// loopback migration that copy and the garbage of the new buffers cost about as much CPU as
// the cipher itself (profiled: 0.26 s of the source's 0.52 s, 0.12 of the destination's
// 0.43), and loopback has no idle core to pay it with. node:crypto stays the fallback where
// libcrypto.so.3 is missing; WANMIG_GCM=node forces it (the benchmark's A/B).

import { createCipheriv, createDecipheriv } from "node:crypto";
import { dlopen, FFIType, type Pointer } from "bun:ffi";

export const TAG_LEN = 16;
export const NONCE_LEN = 12;

/** One key, sealing or opening messages in place. */
export interface GcmKey {
  /** Encrypts `data` in place; returns the tag. */
  seal(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array): Buffer;
  /** Decrypts `data` in place; false if the tag does not match (then `data` is garbage). */
  open(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): boolean;
}

const EVP_CTRL_GCM_GET_TAG = 0x10;
const EVP_CTRL_GCM_SET_TAG = 0x11;

function loadLibcrypto() {
  if (process.env.WANMIG_GCM === "node") return undefined;
  try {
    return dlopen("libcrypto.so.3", {
      EVP_CIPHER_CTX_new: { args: [], returns: FFIType.ptr },
      EVP_CIPHER_CTX_free: { args: [FFIType.ptr], returns: FFIType.void },
      EVP_aes_256_gcm: { args: [], returns: FFIType.ptr },
      EVP_EncryptInit_ex: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
      EVP_DecryptInit_ex: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
      EVP_EncryptUpdate: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
      EVP_DecryptUpdate: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
      EVP_EncryptFinal_ex: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
      EVP_DecryptFinal_ex: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
      EVP_CIPHER_CTX_ctrl: { args: [FFIType.ptr, FFIType.i32, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
    }).symbols;
  } catch {
    return undefined;
  }
}

const lib = loadLibcrypto();

/** Frees a key's libcrypto context once the key is garbage. */
const contexts = new FinalizationRegistry<Pointer>((ctx) => lib?.EVP_CIPHER_CTX_free(ctx));

/** A key in libcrypto, for one use (sealing or opening): its schedule is set up once. */
class NativeKey implements GcmKey {
  private readonly ctx: Pointer;
  private readonly outLen = new Int32Array(1);
  private readonly scratch = new Uint8Array(16);

  constructor(key: Uint8Array, use: "seal" | "open") {
    const l = lib!;
    const cipher = l.EVP_aes_256_gcm();
    const ctx = l.EVP_CIPHER_CTX_new();
    if (!ctx || !cipher) throw new Error("libcrypto: cannot make a cipher context");
    const init = use === "seal" ? l.EVP_EncryptInit_ex : l.EVP_DecryptInit_ex;
    if (init(ctx, cipher, null, key, null) !== 1) {
      l.EVP_CIPHER_CTX_free(ctx);
      throw new Error("libcrypto: cannot set the key");
    }
    this.ctx = ctx as Pointer;
    contexts.register(this, this.ctx);
  }

  seal(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array): Buffer {
    const l = lib!;
    const tag = Buffer.allocUnsafe(TAG_LEN);
    const ok =
      l.EVP_EncryptInit_ex(this.ctx, null, null, null, nonce) === 1 &&
      l.EVP_EncryptUpdate(this.ctx, null, this.outLen, aad, aad.length) === 1 &&
      (data.length === 0 || l.EVP_EncryptUpdate(this.ctx, data, this.outLen, data, data.length) === 1) &&
      l.EVP_EncryptFinal_ex(this.ctx, this.scratch, this.outLen) === 1 &&
      l.EVP_CIPHER_CTX_ctrl(this.ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) === 1;
    if (!ok) throw new Error("libcrypto: sealing failed");
    return tag;
  }

  open(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): boolean {
    const l = lib!;
    return (
      l.EVP_DecryptInit_ex(this.ctx, null, null, null, nonce) === 1 &&
      l.EVP_DecryptUpdate(this.ctx, null, this.outLen, aad, aad.length) === 1 &&
      (data.length === 0 || l.EVP_DecryptUpdate(this.ctx, data, this.outLen, data, data.length) === 1) &&
      l.EVP_CIPHER_CTX_ctrl(this.ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) === 1 &&
      l.EVP_DecryptFinal_ex(this.ctx, this.scratch, this.outLen) === 1
    );
  }
}

/** node:crypto, each result copied back into place. */
class NodeKey implements GcmKey {
  constructor(private readonly key: Uint8Array) {}

  seal(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array): Buffer {
    const c = createCipheriv("aes-256-gcm", this.key, nonce, { authTagLength: TAG_LEN });
    c.setAAD(aad);
    data.set(c.update(data));
    c.final(); // GCM: nothing more comes out
    return c.getAuthTag();
  }

  open(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): boolean {
    const d = createDecipheriv("aes-256-gcm", this.key, nonce, { authTagLength: TAG_LEN });
    d.setAAD(aad);
    d.setAuthTag(tag);
    data.set(d.update(data));
    try {
      d.final();
      return true;
    } catch {
      return false;
    }
  }
}

/** A key for sealing or for opening; `engine` forces one (tests compare them). */
export function gcmKey(key: Uint8Array, use: "seal" | "open", engine: "native" | "node" | "best" = "best"): GcmKey {
  return engine !== "node" && lib ? new NativeKey(key, use) : new NodeKey(key);
}

export const haveNativeGcm = lib !== undefined;
