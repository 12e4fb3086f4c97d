// Bringing this very binary to the other host: gzip'd on the way (every host has gzip; the
// 110 MB binary goes as 53 MB, zstd -19 would make 41 MB but takes a minute to compress
// and is not on every host), written under a temporary name, renamed into place, and
// checked by SHA-256. The limit is on a stall, not on the whole: over 1.5 Mbit/s the copy
// takes five minutes and is healthy, one that moves nothing for a minute is not.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import type { Logger } from "../log.ts";
import { CommandError, runCommandFed } from "../util/run.ts";
import { type SshTarget, sshArgv, sshRun } from "./ssh.ts";

const COPY_STALL_MS = 60_000;
const GZIP_LEVEL = 6;

/** The running executable, when it is wanmig itself (compiled) and not Bun running the sources. */
export function selfBinary(): string | undefined {
  return /^bun(\.exe)?$/.test(basename(process.execPath)) ? undefined : process.execPath;
}

const INSTALL_SCRIPT = 'mkdir -p "$(dirname "$1")" && t="$1.tmp.$$" && if [ "$2" = gzip ]; then gzip -dc > "$t"; else cat > "$t"; fi && chmod 755 "$t" && mv -f "$t" "$1"';

export async function copySelf(t: SshTarget, remoteBin: string, log: Logger): Promise<{ bytes: number; sentBytes: number; compressed: boolean; sha256: string; seconds: number }> {
  const start = performance.now();
  const bytes = readFileSync(selfBinary()!);
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  const gzipThere = await sshRun(t, ["sh", "-c", "command -v gzip >/dev/null"], log).then(() => true, () => false);
  const payload = gzipThere ? Bun.gzipSync(bytes, { level: GZIP_LEVEL }) : bytes;
  await runCommandFed(sshArgv(t, ["sh", "-c", INSTALL_SCRIPT, "copy", remoteBin, gzipThere ? "gzip" : "raw"]), log, payload, { stallMs: COPY_STALL_MS });
  const there = (await sshRun(t, ["sha256sum", remoteBin], log)).stdout.split(/\s+/)[0];
  if (there !== sha256) throw new CommandError(["sha256sum", remoteBin], 0, `the copy's SHA-256 is ${there}, this binary's ${sha256}`);
  return { bytes: bytes.length, sentBytes: payload.length, compressed: gzipThere, sha256, seconds: (performance.now() - start) / 1000 };
}
