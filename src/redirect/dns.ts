// Dynamic DNS (RFC 2136) through `nsupdate` with a TSIG key: new clients find the VM at
// its new address. The old record is deleted and the new one added in one update.

import type { Logger } from "../log.ts";
import { CommandError, runCommand } from "../util/run.ts";
import { RedirectError } from "./journal.ts";

export interface DnsUpdate {
  name: string;
  server: string;
  port: number;
  keyFile: string;
  ttl: number;
}

/** nsupdate's words for what an operator can fix. */
const KNOWN_NSUPDATE_ERRORS: [RegExp, string, string][] = [
  [/TSIG|BADKEY|BADSIG|tsig indicates error|NOTAUTH/i, "the DNS server refused the TSIG key", "check --dns-key: the key's name, algorithm and secret must match the server's"],
  [/REFUSED/, "the DNS server refused the update", "allow updates of this zone with this key (update-policy / allow-update)"],
  [/NOTZONE|NXDOMAIN|not found|SERVFAIL/i, "the DNS server does not serve that name", "check --dns-name and the zone on the server"],
  [/timed out|could not talk|connection refused|communications error/i, "the DNS server did not answer", "check --dns-server HOST[:PORT]"],
  [/could not read key|invalid key|file not found/i, "nsupdate cannot read the key file", "check --dns-key"],
];

export async function updateDns(u: DnsUpdate, oldIp: string | undefined, newIp: string, log: Logger): Promise<void> {
  const type = newIp.includes(":") ? "AAAA" : "A";
  const lines = [`server ${u.server} ${u.port}`];
  if (oldIp) lines.push(`update delete ${u.name} ${oldIp.includes(":") ? "AAAA" : "A"} ${oldIp}`);
  lines.push(`update add ${u.name} ${u.ttl} ${type} ${newIp}`, "send", "");
  try {
    await runCommand(["nsupdate", "-k", u.keyFile], log, { input: lines.join("\n"), timeoutMs: 30_000 });
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    const said = `${err.stderr}`;
    const known = KNOWN_NSUPDATE_ERRORS.find(([re]) => re.test(said));
    throw new RedirectError(`DNS update of ${u.name} to ${newIp}: ${known ? known[1] : `nsupdate exited ${err.code}`}`, { cause: err, hint: known?.[2] });
  }
  log.info(`DNS: ${u.name} ${type} ${newIp} (TTL ${u.ttl}) at ${u.server}:${u.port}${oldIp ? `, ${oldIp} removed` : ""}`);
}

/** Waits until `ip` answers a ping (the VM has its new address), up to `timeoutMs`. */
export async function waitUntilAnswers(ip: string, timeoutMs: number, log: Logger): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    try {
      await runCommand(["ping", "-c", "1", "-W", "1", ip], log);
      return true;
    } catch {
      await Bun.sleep(200);
    }
  }
  return false;
}
