// What an operator reads when a socket or a file cannot be opened: which address or path,
// and why, in one line. Bun's own errors say "Failed to listen at 127.0.0.1" or "Was there a typo in the
// url or port?" and leave the address, the port and the reason to a code in a field.

import { statSync } from "node:fs";
import { dirname } from "node:path";
import { ExitCode, WanmigError } from "../errors.ts";

/** A listener that could not be opened: a port in use, an address not of this host, a missing directory. Exit 3. */
export class ListenError extends WanmigError {
  readonly code?: string;
  constructor(message: string, opts: { code?: string; cause?: unknown; hint?: string } = {}) {
    super(message, { exitCode: ExitCode.badInput, cause: opts.cause, hint: opts.hint });
    this.code = opts.code;
  }
}

export type SocketAddress = { host: string; port: number } | { path: string };

export function formatAddress(a: SocketAddress): string {
  return "path" in a ? a.path : `${a.host.includes(":") ? `[${a.host}]` : a.host}:${a.port}`;
}

/** The first errno-style code along an error's cause chain (fetch wraps the socket's error). */
export function codeOf(err: unknown): string | undefined {
  for (let e = err, depth = 0; e && depth < 8; e = (e as Error).cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === "string") return code;
  }
  return undefined;
}

const FILE_PROBLEMS: Record<string, string> = {
  ENOENT: "no such file",
  ENOTDIR: "a part of the path is not a directory",
  EACCES: "permission denied",
  EPERM: "permission denied",
  EISDIR: "it is a directory",
  ENOSPC: "no space left on the device",
  EROFS: "a read-only file system",
};

/** "no such file (ENOENT)": why a file could not be read or written, in a few words. */
export function fileProblem(cause: unknown): string {
  const code = codeOf(cause);
  const text = code ? FILE_PROBLEMS[code] : undefined;
  if (text) return `${text} (${code})`;
  const message = cause instanceof Error ? cause.message : String(cause);
  return `${message}${code && !message.includes(code) ? ` (${code})` : ""}`;
}

/**
 * `label`: what was to listen there ("cannot listen for NBD on"); `busyHint`: the hint when
 * the address is in use. A cause we can explain is not chained (its message is Bun's, and
 * says less); any other is kept.
 */
export function listenError(cause: unknown, where: SocketAddress, label = "cannot listen on", busyHint?: string): ListenError {
  const at = `${label} ${formatAddress(where)}`;
  const code = codeOf(cause);
  const tcp = !("path" in where);
  const port = tcp ? where.port : undefined;
  switch (code) {
    case "EADDRINUSE":
      return new ListenError(`${at}: address in use: another process listens there (EADDRINUSE)`, {
        code,
        hint: busyHint ?? (tcp ? `stop that process (\`ss -ltnp 'sport = :${port}'\` names it), or pick another port` : "stop that process, or pick another path"),
      });
    case "EADDRNOTAVAIL":
      return new ListenError(`${at}: ${tcp ? where.host : "that address"} is not an address of this host (EADDRNOTAVAIL)`, {
        code,
        hint: "listen on one of this host's addresses (`ip -br addr` lists them), or on 0.0.0.0 for all of them",
      });
    case "EACCES":
      if (tcp && port! > 0 && port! < 1024)
        return new ListenError(`${at}: port ${port} is privileged and this process may not bind it (EACCES)`, {
          code,
          hint: "pick a port above 1023, or run as root (or with CAP_NET_BIND_SERVICE)",
        });
      return new ListenError(`${at}: permission denied (EACCES)`, { code, hint: tcp ? "pick another address or port" : `check that you may write in ${dirname((where as { path: string }).path)}` });
    case "ENOENT":
      if (!tcp) return new ListenError(`${at}: its directory ${dirname(where.path)} does not exist (ENOENT)`, { code, hint: "create the directory, or pick another path" });
      break;
    case "ENOTDIR":
      if (!tcp) return new ListenError(`${at}: a part of ${dirname(where.path)} is not a directory (ENOTDIR)`, { code, hint: "pick another path" });
  }
  const message = cause instanceof Error ? cause.message : String(cause);
  // Bun gives no code for a host name it cannot resolve to an address of this host.
  if (tcp && !code && /^Failed to listen/.test(message) && !/^[\d.]+$|:/.test(where.host))
    return new ListenError(`${at}: ${where.host} does not name an address of this host`, {
      hint: "listen on one of this host's addresses (`ip -br addr` lists them), or on 0.0.0.0 for all of them",
    });
  if (/PEM|SSL|certificate|private key/i.test(message)) return new ListenError(`${at} with TLS: ${message}`, { cause, hint: "check the files of --tls-cert, --tls-key and --tls-ca" });
  // Bun's "Failed to listen at HOST" adds nothing to `at`: its code says more.
  if (/^Failed to listen/.test(message)) return new ListenError(`${at}: ${code ?? "the system refused it"}`, { code });
  return new ListenError(`${at}: ${message}${code && !message.includes(code) ? ` (${code})` : ""}`, { code, cause });
}

/** A connection that could not be opened: nothing listens, no such host, no route. Exit 4; `code` kept (a refused connection is retried as a broken link). */
export class ConnectError extends WanmigError {
  readonly code?: string;
  constructor(message: string, opts: { code?: string; cause?: unknown } = {}) {
    super(message, { exitCode: ExitCode.peerFailure, cause: opts.cause });
    this.code = opts.code;
  }
}

/** "nothing listens on 127.0.0.1:1 (ECONNREFUSED)": the address tried and why it failed. */
export function connectError(cause: unknown, where: { host: string; port: number }): ConnectError {
  const at = formatAddress(where);
  const code = codeOf(cause);
  const known: Record<string, string> = {
    ECONNREFUSED: `nothing listens on ${at}`,
    ENOTFOUND: `${where.host} does not resolve to an address`,
    EAI_NONAME: `${where.host} does not resolve to an address`,
    EAI_AGAIN: `${where.host} could not be resolved now (DNS did not answer)`,
    ETIMEDOUT: `${at} did not answer`,
    EHOSTUNREACH: `no route to ${where.host}`,
    ENETUNREACH: `no route to ${where.host}'s network`,
  };
  if (code && known[code]) return new ConnectError(`${known[code]} (${code})`, { code });
  const message = cause instanceof Error ? cause.message : String(cause);
  return new ConnectError(`cannot connect to ${at}: ${message}${code && !message.includes(code) ? ` (${code})` : ""}`, { code, cause });
}

/**
 * Why nothing answered on the unix socket at `path`, from the connect's error code and what
 * is (or is not) there: "no such socket", "a stale socket nobody listens on", ...
 */
export function whyNoAnswer(path: string, cause: unknown): string {
  const code = codeOf(cause);
  if (code === "EACCES" || code === "EPERM") return `permission denied (${code}): run as the serve's user, or root`;
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    const c = codeOf(err);
    try {
      if (!statSync(dirname(path)).isDirectory()) return `${dirname(path)} is not a directory (ENOTDIR)`;
    } catch {
      return `no such directory ${dirname(path)} (ENOENT)`;
    }
    return c === "ENOENT" ? "no such socket (ENOENT)" : `${(err as Error).message}`;
  }
  if (!st.isSocket()) return `${path} is not a socket`;
  if (code === "ECONNREFUSED" || code === "ENOENT") return "a stale socket nobody listens on (ECONNREFUSED): its server is gone";
  const message = cause instanceof Error ? cause.message : String(cause);
  return `${message}${code && !message.includes(code) ? ` (${code})` : ""}`;
}
