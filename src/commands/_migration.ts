// Argument handling shared by `source` and `dest`: the secret and the host:port form.
import { accessSync, constants, statSync } from "node:fs";
import { ExitCode, UsageError, WanmigError } from "../errors.ts";
import { readSecretFile } from "../net/auth.ts";
import type { Credentials } from "../phases/init.ts";

export function credentials(args: { "secret-file"?: string; insecure?: boolean; tls?: boolean }, what: string): Credentials {
  // Under TLS the certificates authenticate both ends and TLS encrypts: a secret is optional,
  // and frames are not sealed a second time (tls.ts).
  if (args.tls) return { secret: args["secret-file"] ? readSecretFile(args["secret-file"]) : undefined, tls: true };
  if (args["secret-file"]) return { secret: readSecretFile(args["secret-file"]) };
  if (args.insecure) return {};
  throw new UsageError(`${what} over TCP needs --secret-file F or --tls (or --insecure, which lets anyone who can reach the port take the disk)`);
}

export function parseHostPort(spec: string, flag: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(spec);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new UsageError(`${flag} must be HOST:PORT, got ${JSON.stringify(spec)}`);
  return { host: m[1] ?? m[2]!, port };
}

/**
 * `dir` must be a directory this process may write in: checked at start, so that a file
 * written later (an image, a report) does not fail once the work is done. `what` names the
 * flag and its value, for the message.
 */
export function writableDir(dir: string, what: string): void {
  let isDir: boolean;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    throw new WanmigError(`${what}: its directory ${dir} does not exist`, { exitCode: ExitCode.badInput, hint: "create the directory first, or pick a path in one that exists" });
  }
  if (!isDir) throw new WanmigError(`${what}: ${dir} is not a directory`, { exitCode: ExitCode.badInput, hint: "pick a path in a directory" });
  try {
    accessSync(dir, constants.W_OK);
  } catch {
    throw new WanmigError(`${what}: this process may not write in ${dir} (EACCES)`, { exitCode: ExitCode.badInput, hint: "run as a user that may write there, or pick another directory" });
  }
}
