// The benches' disk images: a sparse image with data extents of a chosen kind (random,
// web-server log text, shared libraries), and a byte-for-byte comparison of two images.

import { $ } from "bun";
import { randomBytes } from "node:crypto";
import { closeSync, openSync, readFileSync, writeSync } from "node:fs";
import { MiB } from "./constants.ts";

/** Web-server log lines: text that zstd -1 compresses about 4.5× in 64 KiB blocks (seeded, so every run's image compresses alike). */
function logText(bytes: number, seed: number): Uint8Array {
  let s = seed | 0 || 1;
  const rnd = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
  const pick = <T>(a: T[]) => a[Math.floor(rnd() * a.length)]!;
  const int = (n: number) => Math.floor(rnd() * n);
  const paths = ["/", "/index.html", "/static/css/site.css", "/static/js/app.js", "/img/logo.png", "/blog/", "/api/v1/items", "/search", "/login", "/feed.xml"];
  const agents = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "curl/8.5.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
  ];
  const codes = [200, 200, 200, 200, 304, 404, 301, 500];
  const out = new Uint8Array(bytes);
  const enc = new TextEncoder();
  let at = 0;
  let t = 1_795_000_000_000;
  while (at < bytes) {
    t += int(2000);
    const q = int(0x1000000).toString(16).padStart(6, "0");
    const sid = int(0x1000000).toString(16).padStart(6, "0") + int(0x1000000).toString(16).padStart(6, "0") + int(0x10000).toString(16).padStart(4, "0");
    const line = `${new Date(t).toISOString()} 10.${int(256)}.${int(256)}.${int(256)} "GET ${pick(paths)}?id=${q} HTTP/1.1" ${pick(codes)} ${int(90000)} "${pick(agents)}" rt=${rnd().toFixed(3)} sid=${sid}\n`;
    at += enc.encodeInto(line, out.subarray(at)).written;
  }
  return out;
}

/** Shared libraries from /usr/lib, in path order, `bytes` of them from `skip` on: an OS disk's compressible-as-code half. */
function osBytes(bytes: number, skip: number): Uint8Array {
  const list = Bun.spawnSync(["sh", "-c", "find /usr/lib -name '*.so*' -type f -size +64k 2>/dev/null | LC_ALL=C sort"]).stdout.toString().trim().split("\n");
  const out = new Uint8Array(bytes);
  let at = 0;
  let skipped = 0;
  for (const f of list) {
    if (at >= bytes) break;
    let data: Uint8Array;
    try {
      data = readFileSync(f);
    } catch {
      continue;
    }
    if (skipped + data.length <= skip) {
      skipped += data.length;
      continue;
    }
    const from = Math.max(0, skip - skipped);
    skipped = skip;
    const n = Math.min(data.length - from, bytes - at);
    out.set(data.subarray(from, from + n), at);
    at += n;
  }
  if (at < bytes) throw new Error(`/usr/lib holds only ${at} bytes of shared libraries past ${skip}; ask for less --data-mib`);
  return out;
}

export type ImageKind = "mixed" | "os" | "random";
export const IMAGE_KINDS: readonly ImageKind[] = ["mixed", "os", "random"];

/**
 * A sparse image with six data extents spread over it. mixed: random, text, random, text, …
 * (the half that does not compress, and logs); os: shared libraries throughout; random:
 * none of it compresses (what a link's throughput is measured with).
 * Returns the extents, and the zstd -19 size of all the data as one stream (`zstd -19`,
 * one thread): the physical limit's numerator, as the issue defines it.
 */
export async function buildImage(path: string, imageMiB: number, dataMiB: number, kind: ImageKind = "mixed", withZstd19 = true): Promise<{ extents: { offsetMiB: number; mib: number; kind: string }[]; textZstdRatio: number; zstd19Bytes?: number }> {
  const n = 6;
  const extentBytes = Math.floor((dataMiB * MiB) / n / 65536) * 65536;
  const stride = Math.floor(imageMiB / n) * MiB;
  if (extentBytes > stride) throw new Error(`--data-mib ${dataMiB} does not fit in --image-mib ${imageMiB}`);
  await $`truncate -s ${imageMiB}M ${path}`;
  const fd = openSync(path, "r+");
  const extents = [];
  // Only a WAN's limit needs it: 768 MiB take zstd -19 minutes.
  const zstd = withZstd19 ? Bun.spawn(["zstd", "-19", "-T1", "-q", "-c"], { stdin: "pipe", stdout: "pipe" }) : undefined;
  const zstdSize = zstd ? new Response(zstd.stdout).arrayBuffer().then((b) => b.byteLength) : Promise.resolve(undefined);
  try {
    for (let i = 0; i < n; i++) {
      const extentKind = kind === "mixed" ? (i % 2 ? "text" : "random") : kind;
      const data = extentKind === "os" ? osBytes(extentBytes, i * extentBytes) : extentKind === "text" ? logText(extentBytes, 0x9e3779b9 + i) : randomBytes(extentBytes);
      for (let at = 0; at < data.length; ) at += writeSync(fd, data, at, data.length - at, i * stride + at);
      zstd?.stdin.write(data);
      extents.push({ offsetMiB: (i * stride) / MiB, mib: extentBytes / MiB, kind: extentKind });
    }
  } finally {
    closeSync(fd);
    zstd?.stdin.end();
  }
  const zstd19Bytes = await zstdSize;
  // As wanmig compresses it: zstd level 1, block by block (64 KiB).
  const sample = logText(8 * MiB, 1);
  let z = 0;
  for (let at = 0; at < sample.length; at += 65536) z += Bun.zstdCompressSync(sample.subarray(at, at + 65536), { level: 1 }).length;
  return { extents, textZstdRatio: sample.length / z, zstd19Bytes };
}

export async function identical(a: string, b: string): Promise<boolean> {
  return (await $`cmp -s ${a} ${b}`.nothrow().quiet()).exitCode === 0;
}
