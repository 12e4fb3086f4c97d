// --tls: both ends present a certificate (made here with the openssl CLI, as a site's PKI
// would issue them) and refuse a peer whose certificate does not chain to their CA.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { ExitCode } from "../src/errors.ts";
import { expectMovedWhole, hosts, MiB, removeHosts, source, withPair, writable } from "./helpers/migration.ts";
import { sh, tempDir } from "./helpers/serve-process.ts";
import { stressWriter } from "./helpers/stress-writer.ts";

let pki: ReturnType<typeof tempDir>;
const file = (n: string) => join(pki.path, n);

/** A CA, and a certificate it signs for 127.0.0.1 (a server's and a client's alike). */
async function ca(name: string): Promise<void> {
  await sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", `/CN=${name} CA`, "-keyout", file(`${name}-ca.key`), "-out", file(`${name}-ca.pem`)]);
}
async function leaf(caName: string, name: string): Promise<void> {
  await sh(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", `/CN=${name}`, "-keyout", file(`${name}.key`), "-out", file(`${name}.csr`)]);
  await Bun.write(file(`${name}.ext`), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n");
  await sh(["openssl", "x509", "-req", "-in", file(`${name}.csr`), "-CA", file(`${caName}-ca.pem`), "-CAkey", file(`${caName}-ca.key`), "-CAcreateserial", "-days", "2", "-extfile", file(`${name}.ext`), "-out", file(`${name}.pem`)]);
}
const tlsFlags = (name: string, caName: string) => ["--tls", "--tls-cert", file(`${name}.pem`), "--tls-key", file(`${name}.key`), "--tls-ca", file(`${caName}-ca.pem`)];

beforeAll(async () => {
  pki = tempDir();
  await ca("site");
  await ca("other");
  await leaf("site", "hostb"); // the destination's
  await leaf("site", "hosta"); // the source's
  await leaf("other", "stranger"); // signed by another CA
}, 30_000);
afterAll(() => {
  removeHosts();
  pki?.remove();
});

describe("--tls with certificates", () => {
  test("the site's certificates at both ends: migrated under a random-4K writer; identical, nothing acknowledged lost, the source fenced", async () => {
    const h = await hosts(64, 24);
    await withPair(
      h,
      async ({ srv, dst }) => {
        const w = await stressWriter(srv.socket, { pattern: "random4k", bytes: 32 * MiB });
        const run = await source(h, dst.port, tlsFlags("hosta", "site"));
        await w.stop();
        expect(run.code, run.stderr).toBe(0);
        await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
      },
      tlsFlags("hostb", "site"),
    );
  }, 60_000);

  test("three streams, each its own TLS connection, under a sequential 1 MiB writer: identical, nothing acknowledged lost, one host", async () => {
    const h = await hosts(96, 64);
    await withPair(
      h,
      async ({ srv, dst }) => {
        const w = await stressWriter(srv.socket, { pattern: "seq1m", from: 68 * MiB, bytes: 24 * MiB });
        const run = await source(h, dst.port, [...tlsFlags("hosta", "site"), "--streams", "3", "--json"]);
        await w.stop();
        expect(run.code, run.stderr).toBe(0);
        expect(run.stderr).toContain("sending over 3 connections");
        expect(run.stdout).toContain('"streams":3');
        await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
      },
      tlsFlags("hostb", "site"),
    );
  }, 60_000);

  test("a source whose certificate another CA signed is refused at the handshake; the destination waits on, and the real source gets through", async () => {
    const h = await hosts(32, 8);
    await withPair(
      h,
      async ({ srv, dst }) => {
        const bad = await source(h, dst.port, tlsFlags("stranger", "site"));
        expect(bad.code).toBe(ExitCode.badInput);
        expect(bad.stderr).toMatch(/TLS with 127\.0\.0\.1:\d+ failed|refused our certificate/);
        expect(bad.stderr).not.toContain("reconnecting"); // not a broken link: it would be refused again
        expect(bad.stderr.split("\n").some((l) => /^\s+at /.test(l))).toBe(false);
        expect(await writable(srv.socket)).toBe(true);
        expect((await srv.ctl.status()).recording.active).toBe(false);
        await dst.waitFor("refused a source at the TLS handshake");
        const good = await source(h, dst.port, tlsFlags("hosta", "site"));
        expect(good.code, good.stderr).toBe(0);
        await sh(["cmp", h.image, h.destImage]);
      },
      tlsFlags("hostb", "site"),
    );
  }, 60_000);

  test("a destination whose certificate does not chain to the source's CA is refused by the source (exit 3), which stays writable", async () => {
    const h = await hosts(32, 8);
    await withPair(
      h,
      async ({ srv, dst }) => {
        const r = await source(h, dst.port, tlsFlags("hosta", "other"));
        expect(r.code).toBe(ExitCode.badInput);
        expect(r.stderr).toMatch(/TLS with 127\.0\.0\.1:\d+ failed/);
        expect(await writable(srv.socket)).toBe(true);
      },
      tlsFlags("hostb", "site"),
    );
  }, 60_000);

  test("--tls without its files, or its files without --tls: one line, exit 2", async () => {
    const h = await hosts(1, 0);
    const a = await source(h, 1, ["--tls", "--tls-cert", file("hosta.pem")]);
    expect(a.code).toBe(ExitCode.usage);
    expect(a.stderr).toContain("--tls needs --tls-key FILE, --tls-ca FILE");
    const b = await source(h, 1, ["--insecure", "--tls-ca", file("site-ca.pem")]);
    expect(b.code).toBe(ExitCode.usage);
    expect(b.stderr).toContain("--tls-ca needs --tls");
  });
});
