// Certificates for a bench's `--tls` rows, made with the openssl CLI as a site's PKI would
// issue them (as test/tls.test.ts does): one CA, and a certificate it signs for each host,
// valid for the addresses the destination may be reached at (the source checks them).

import { $ } from "bun";
import { join } from "node:path";

export interface TlsFlags {
  source: string[];
  dest: string[];
}

/** A CA and two leaf certificates in `dir`; the --tls flags for each end. */
export async function makeTlsPki(dir: string, ips: string[]): Promise<TlsFlags> {
  const f = (n: string) => join(dir, n);
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await $`openssl req -x509 ${ec} -days 2 -subj ${"/CN=bench CA"} -keyout ${f("ca.key")} -out ${f("ca.pem")}`.quiet();
  const san = `subjectAltName=${[...ips.map((ip) => `IP:${ip}`), "DNS:localhost"].join(",")}\nextendedKeyUsage=serverAuth,clientAuth\n`;
  await Bun.write(f("leaf.ext"), san);
  for (const host of ["source", "dest"]) {
    await $`openssl req ${ec} -subj ${`/CN=${host}`} -keyout ${f(`${host}.key`)} -out ${f(`${host}.csr`)}`.quiet();
    await $`openssl x509 -req -in ${f(`${host}.csr`)} -CA ${f("ca.pem")} -CAkey ${f("ca.key")} -CAcreateserial -days 2 -extfile ${f("leaf.ext")} -out ${f(`${host}.pem`)}`.quiet();
  }
  const flags = (host: string) => ["--tls", "--tls-cert", f(`${host}.pem`), "--tls-key", f(`${host}.key`), "--tls-ca", f("ca.pem")];
  return { source: flags("source"), dest: flags("dest") };
}
