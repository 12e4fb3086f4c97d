// TLS with certificates between source and destination, for sites that run a PKI: as QEMU's
// and libvirt's migration TLS, both ends present a certificate and each refuses a peer whose
// certificate does not chain to the CA it was given. Bun's TLS is native (BoringSSL); we
// only hand it the files and read its verdict.
//
// Under TLS the stream is encrypted and authenticated already: frames are not sealed again
// (seal.ts). A secret, if given as well, still runs its HMAC proof in the handshake.

import { createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import type { TLSOptions } from "bun";
import { ExitCode, UsageError, WanmigError } from "../errors.ts";
import { fileProblem } from "../util/os-errors.ts";

export interface TlsFiles {
  cert: string;
  key: string;
  ca: string;
}

/** The peer's certificate was refused, or the TLS handshake failed. */
export class TlsError extends WanmigError {
  constructor(message: string, opts: { cause?: unknown; hint?: string } = {}) {
    super(message, { exitCode: ExitCode.badInput, ...opts });
  }
}

export const tlsArgs = {
  tls: { type: "boolean", description: "TLS with certificates (--tls-cert, --tls-key, --tls-ca): each end refuses a peer whose certificate does not chain to the CA", default: false },
  "tls-cert": { type: "string", description: "with --tls: this host's certificate (PEM, with any intermediates)", valueHint: "FILE" },
  "tls-key": { type: "string", description: "with --tls: its private key (PEM)", valueHint: "FILE" },
  "tls-ca": { type: "string", description: "with --tls: the CA the peer's certificate must chain to (PEM)", valueHint: "FILE" },
} as const;

/** The TLS files the arguments name, read and parsed now (a missing flag is a usage error, an unusable file bad input); undefined without --tls. */
export function tlsFromArgs(args: { tls?: boolean; "tls-cert"?: string; "tls-key"?: string; "tls-ca"?: string }): TlsFiles | undefined {
  const named = (["tls-cert", "tls-key", "tls-ca"] as const).filter((k) => args[k] !== undefined);
  if (!args.tls) {
    if (named.length) throw new UsageError(`--${named[0]} needs --tls`);
    return undefined;
  }
  const missing = (["tls-cert", "tls-key", "tls-ca"] as const).filter((k) => !args[k]);
  if (missing.length) throw new UsageError(`--tls needs ${missing.map((k) => `--${k} FILE`).join(", ")}`);
  const files = { cert: args["tls-cert"]!, key: args["tls-key"]!, ca: args["tls-ca"]! };
  // Read and parsed now, before anything listens or connects: a bad file is one line here,
  // not BoringSSL's "PEM routines:OPENSSL_internal:NO_START_LINE" from inside Bun.listen.
  const pem: Record<string, string> = {};
  for (const [flag, path] of Object.entries(files))
    try {
      pem[flag] = readFileSync(path, "utf8");
    } catch (cause) {
      throw new TlsError(`cannot read --tls-${flag} ${path}: ${fileProblem(cause)}`, { hint: "name a readable PEM file" });
    }
  let cert: X509Certificate;
  let key: KeyObject;
  try {
    cert = new X509Certificate(pem.cert!);
  } catch {
    throw new TlsError(`--tls-cert ${files.cert} is not a PEM certificate`, { hint: "it must hold -----BEGIN CERTIFICATE----- (this host's, then any intermediates)" });
  }
  try {
    new X509Certificate(pem.ca!);
  } catch {
    throw new TlsError(`--tls-ca ${files.ca} is not a PEM certificate`, { hint: "it must hold the CA's -----BEGIN CERTIFICATE-----" });
  }
  try {
    key = createPrivateKey(pem.key!);
  } catch {
    throw new TlsError(`--tls-key ${files.key} is not a PEM private key (or it is encrypted)`, { hint: "it must hold an unencrypted -----BEGIN PRIVATE KEY-----" });
  }
  if (!cert.checkPrivateKey(key)) throw new TlsError(`--tls-key ${files.key} is not the key of --tls-cert ${files.cert}`, { hint: "give the key the certificate was made for" });
  return files;
}

function material(f: TlsFiles) {
  return { cert: readFileSync(f.cert, "utf8"), key: readFileSync(f.key, "utf8"), ca: readFileSync(f.ca, "utf8") };
}

/** The destination's side: it asks every source for a certificate and refuses one the CA did not sign. */
export function serverTls(f: TlsFiles): TLSOptions {
  return { ...material(f), requestCert: true, rejectUnauthorized: true };
}

/** The source's side: the destination's certificate must chain to the CA and name `host`. */
export function clientTls(f: TlsFiles, host: string): TLSOptions {
  return { ...material(f), rejectUnauthorized: true, serverName: host };
}
