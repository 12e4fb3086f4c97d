// A real OpenSSH server on loopback for tests, with a generated host key and user key.
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { MAIN, sh } from "./serve-process.ts";

/**
 * `where`: run sshd inside a network namespace, listening on `ip` there, and reach it from
 * `clientNs` (both made by the test); by default, loopback in our own namespace.
 */
export async function startSshd(dir: string, where: { ns: string; ip: string; clientNs: string } | undefined = undefined, sessionEnv: Record<string, string> = {}, opts: { userKey?: string } = {}) {
  mkdirSync(dir, { recursive: true });
  mkdirSync("/run/sshd", { recursive: true }); // Debian's sshd wants its privilege-separation dir
  await sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, "host_key")]);
  // One user key for several hosts (`userKey`): they then reach one another, as a cluster's do.
  if (opts.userKey) for (const f of ["", ".pub"]) await sh(["cp", `${opts.userKey}${f}`, join(dir, `user_key${f}`)]);
  else await sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, "user_key")]);
  await sh(["cp", join(dir, "user_key.pub"), join(dir, "authorized_keys")]);
  const port = 22000 + Math.floor(Math.random() * 20000);
  const config = join(dir, "sshd_config");
  writeFileSync(
    config,
    [
      `Port ${port}`,
      `ListenAddress ${where?.ip ?? "127.0.0.1"}`,
      `HostKey ${join(dir, "host_key")}`,
      `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
      "PermitRootLogin prohibit-password",
      "PasswordAuthentication no",
      "StrictModes no",
      "UsePAM no",
      `PidFile ${join(dir, "sshd.pid")}`,
      "LogLevel ERROR",
      "Subsystem sftp internal-sftp", // as a Debian host's sshd has (Ansible copies files over it)
      // Environment of every session (PATH shims for what a test host cannot have); one
      // SetEnv line, since sshd takes the first of repeated options.
      ...(Object.keys(sessionEnv).length ? [`SetEnv ${Object.entries(sessionEnv).map(([k, v]) => `${k}=${v}`).join(" ")}`] : []),
    ].join("\n") + "\n",
  );
  const inNs = (ns: string | undefined) => (ns ? ["ip", "netns", "exec", ns] : []);
  const proc = Bun.spawn([...inNs(where?.ns), "/usr/sbin/sshd", "-D", "-e", "-f", config], { stdout: "ignore", stderr: "pipe" });
  // The client side: the real ssh, told to use our key and not to keep host keys.
  const sshWrapper = join(dir, "ssh");
  writeFileSync(sshWrapper, `#!/bin/sh\nexec ${inNs(where?.clientNs).join(" ")} ssh -i ${join(dir, "user_key")} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$@"\n`);
  chmodSync(sshWrapper, 0o755);
  // The "remote" wanmig: this checkout, run by Bun.
  const remoteBin = join(dir, "wanmig");
  writeFileSync(remoteBin, `#!/bin/sh\nexec ${process.execPath} ${MAIN} "$@"\n`);
  chmodSync(remoteBin, 0o755);
  for (let i = 0; ; i++) {
    const r = await sh([sshWrapper, "-p", String(port), `root@${where?.ip ?? "127.0.0.1"}`, "true"], { allowFail: true });
    if (r.code === 0) break;
    if (i > 100) throw new Error(`sshd did not come up: ${r.stderr}`);
    await Bun.sleep(50);
  }
  return {
    port,
    host: where?.ip ?? "127.0.0.1",
    sshWrapper,
    remoteBin,
    async stop() {
      proc.kill();
      await proc.exited;
    },
  };
}
