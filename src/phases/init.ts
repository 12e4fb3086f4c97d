// Phase 1, init: version check and mutual authentication on a fresh channel.
// The source says who it is and what it sends (name, size, block size); the destination
// proves first, then the source; the destination answers READY with where to resume.

import { proof, newNonce, verifyProof } from "../net/auth.ts";
import { sessionKeys } from "../net/seal.ts";
import { type Channel, ChannelClosed } from "../net/channel.ts";
import { TlsError } from "../net/tls.ts";
import { ProtocolError } from "../net/errors.ts";
import { type Hello, msg, MsgType, PROTOCOL_VERSION, type Ready } from "../net/protocol.ts";
import { InitError } from "./errors.ts";

export interface Credentials {
  /** Undefined only with --insecure, or over SSH or TLS, which authenticate already. */
  secret?: Uint8Array;
  /** The transport is TLS: it encrypts, so frames are not sealed again. */
  tls?: boolean;
}

/** What the source says of the disk it sends: HELLO's fields but the handshake's own. */
export type Offer = Omit<Hello, "type" | "version" | "nonce" | "join">;

/** `timing.welcomeMs`: HELLO to WELCOME, one round trip and no work of the destination's (READY comes after it opened the image). */
export async function sourceHandshake(ch: Channel, creds: Credentials, offer: Offer, timing?: { welcomeMs?: number }): Promise<Ready> {
  await authenticateToDest(ch, creds, offer, timing);
  return ch.expect(MsgType.READY);
}

/**
 * Another connection to the destination, joined to the channel READY opened as lane `lane`
 * (lanes.ts). It authenticates like the first, so it has keys of its own.
 */
export async function joinHandshake(ch: Channel, creds: Credentials, offer: Offer, join: { session: string; lane: number }): Promise<void> {
  await authenticateToDest(ch, creds, { ...offer, join });
  const j = await ch.expect(MsgType.JOINED);
  if (j.lane !== join.lane) throw new ProtocolError(`the destination joined stream ${join.lane} as ${j.lane}`);
}

/** HELLO, WELCOME, AUTH: both ends proved, and (with a secret, without TLS) everything after AUTH sealed. */
async function authenticateToDest(ch: Channel, creds: Credentials, offer: Offer & { join?: { session: string; lane: number } }, timing?: { welcomeMs?: number }): Promise<void> {
  const nonce = newNonce();
  const sentAt = performance.now();
  await ch.send(msg.hello({ nonce, ...offer }));
  const w = await ch.expect(MsgType.WELCOME).catch((err: unknown) => {
    // TLS 1.3: our side of the handshake ends before the destination has checked our
    // certificate, so its refusal shows as a connection closed before WELCOME. Not a broken
    // link to resume over: the same certificate would be refused again.
    if (creds.tls && err instanceof ChannelClosed)
      throw new TlsError("the destination closed the connection after the TLS handshake: it refused our certificate", { hint: "this host's --tls-cert must chain to the destination's --tls-ca" });
    throw err;
  });
  if (timing) timing.welcomeMs = performance.now() - sentAt;
  if (w.version !== PROTOCOL_VERSION) throw new InitError(`destination speaks protocol ${w.version}, we speak ${PROTOCOL_VERSION}`, { hint: "use the same wanmig version on both hosts" });
  if (creds.secret && !verifyProof(creds.secret, "dest", w.nonce, nonce, w.proof))
    throw new InitError("the destination could not prove it knows the secret", {
      cause: new ProtocolError("wrong secret"),
      hint: "check --secret-file on both hosts",
    });
  if (!creds.secret || creds.tls) {
    await ch.send(msg.auth(creds.secret ? proof(creds.secret, "source", w.nonce, nonce) : ""));
    return;
  }
  // Everything after AUTH is sealed (seal.ts): inbound before AUTH goes, since READY may
  // come back before send() returns.
  const keys = sessionKeys(creds.secret, nonce, w.nonce);
  ch.sealInbound(keys.d2s);
  await ch.send(msg.auth(proof(creds.secret, "source", w.nonce, nonce)));
  ch.sealOutbound(keys.s2d);
}

/** The destination's side up to (not including) READY; returns what the source offered. */
export async function destHandshake(ch: Channel, creds: Credentials): Promise<Hello> {
  const hello = await ch.expect(MsgType.HELLO);
  if (hello.version !== PROTOCOL_VERSION) {
    await ch.send(msg.error(`protocol version ${hello.version} is not supported; this destination speaks ${PROTOCOL_VERSION}`));
    throw new InitError(`source speaks protocol ${hello.version}, we speak ${PROTOCOL_VERSION}`, { cause: new ProtocolError("version mismatch") });
  }
  const nonce = newNonce();
  await ch.send(msg.welcome({ nonce, proof: creds.secret ? proof(creds.secret, "dest", hello.nonce, nonce) : "" }));
  const auth = await ch.expect(MsgType.AUTH);
  if (creds.secret && !verifyProof(creds.secret, "source", hello.nonce, nonce, auth.proof)) {
    await ch.send(msg.error("authentication failed"));
    throw new InitError("the source could not prove it knows the secret", { cause: new ProtocolError("wrong secret") });
  }
  if (creds.secret && !creds.tls) {
    const keys = sessionKeys(creds.secret, hello.nonce, nonce);
    ch.sealInbound(keys.s2d);
    ch.sealOutbound(keys.d2s);
  }
  return hello;
}
