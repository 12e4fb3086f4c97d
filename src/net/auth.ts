// Mutual authentication by a shared secret, which never crosses the wire.
//
// Each side sends a fresh random nonce; each proves knowledge of the secret with an HMAC
// over both nonces and its own role label. The role label stops a reflection attack
// (replaying the peer's own proof back at it); the fresh nonces stop replays of an old
// session. The destination proves first, so a source never streams a disk to an impostor.

import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { ExitCode, WanmigError } from "../errors.ts";
import { fileProblem } from "../util/os-errors.ts";

export type Role = "source" | "dest";

export class AuthError extends WanmigError {
  constructor(message: string, opts: { cause?: unknown; hint?: string } = {}) {
    super(message, { exitCode: ExitCode.badInput, ...opts });
  }
}

export function newNonce(): string {
  return randomBytes(32).toString("hex");
}

/** The proof `role` sends: HMAC-SHA256(secret, role | the peer's nonce | own nonce). */
export function proof(secret: Uint8Array, role: Role, peerNonce: string, ownNonce: string): string {
  return createHmac("sha256", secret).update(`wanmig-v1|${role}|${peerNonce}|${ownNonce}`).digest("hex");
}

export function verifyProof(secret: Uint8Array, role: Role, peerNonce: string, ownNonce: string, claimed: string): boolean {
  const want = Buffer.from(proof(secret, role, ownNonce, peerNonce), "hex");
  const got = Buffer.from(claimed, "hex");
  return got.length === want.length && timingSafeEqual(got, want);
}

/** Reads a secret file; refuses one that others can read, as ssh does with keys. */
export function readSecretFile(path: string): Uint8Array {
  let st;
  try {
    st = statSync(path);
  } catch (cause) {
    throw new AuthError(`cannot read secret file ${path}: ${fileProblem(cause)}`, { hint: "the same --secret-file on both hosts, mode 0600; make one with: head -c 32 /dev/urandom | base64 > FILE" });
  }
  if (!st.isFile()) throw new AuthError(`secret file ${path} is not a file`, { hint: "name the file that holds the secret" });
  if (st.mode & 0o077) throw new AuthError(`secret file ${path} is readable by others (mode ${(st.mode & 0o777).toString(8)})`, { hint: `chmod 600 ${path}` });
  let secret;
  try {
    secret = readFileSync(path);
  } catch (cause) {
    throw new AuthError(`cannot read secret file ${path}: ${fileProblem(cause)}`, { hint: "run as a user that may read it (mode 0600: its owner)" });
  }
  const trimmed = Buffer.from(secret.toString("utf8").trim(), "utf8");
  if (trimmed.length < 16) throw new AuthError(`secret in ${path} is too short (${trimmed.length} bytes; want 16 or more)`, { hint: "make one with: head -c 32 /dev/urandom | base64 > FILE" });
  return trimmed;
}
