// Sealed frames (seal.ts): with a secret, nobody on the path can read the disk, and a
// frame altered, replayed, reordered or dropped is refused at that frame.
import { afterAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { closeSync, openSync, writeSync } from "node:fs";
import { Channel } from "../src/net/channel.ts";
import { msg, MsgType } from "../src/net/protocol.ts";
import { haveNativeGcm } from "../src/net/aes-gcm.ts";
import { MAX_SEALED, Opener, SealError, Sealer, sessionKeys } from "../src/net/seal.ts";
import { expectMovedWhole, expectResumedOnce, hosts, MiB, removeHosts, source, spawnSource, withPair, writable } from "./helpers/migration.ts";
import { stressWriter } from "./helpers/stress-writer.ts";
import { startProxy } from "./helpers/proxy.ts";

afterAll(() => removeHosts());

const secret = Buffer.from("a-secret-of-more-than-sixteen-bytes");

/** `n` frames sealed in one direction, as the bytes on the wire, record by record. */
function sealed(key: Buffer, frames: Buffer[], engine?: "native" | "node"): Buffer[] {
  const s = new Sealer(key, engine);
  return frames.map((f) => Buffer.concat(s.seal(Buffer.from(f)))); // sealed in place: a copy
}

describe("sealing, on synthetic streams", () => {
  const keys = sessionKeys(secret, "aa", "bb");
  const frames = [randomBytes(100), randomBytes(70000), randomBytes(1), randomBytes(4096)];

  test("frames open as they were sealed, however the stream is cut into chunks; each direction has its own key, each connection its own keys", () => {
    const wire = Buffer.concat(sealed(keys.s2d, frames));
    for (const cut of [1, 7, 4096, wire.length]) {
      const o = new Opener(keys.s2d);
      const got: Buffer[] = [];
      for (let at = 0; at < wire.length; at += cut) got.push(...o.push(wire.subarray(at, at + cut)));
      expect(got.map((b) => b.toString("hex"))).toEqual(frames.map((b) => b.toString("hex")));
    }
    expect(keys.s2d.equals(keys.d2s)).toBe(false);
    expect(sessionKeys(secret, "aa", "bc").s2d.equals(keys.s2d)).toBe(false);
    // The plaintext appears nowhere in what is sent.
    expect(wire.includes(frames[1]!.subarray(1000, 1032))).toBe(false);
  });

  test("a frame as large as the protocol allows (a 32 MiB write's delta) opens; one byte more is refused", () => {
    const big = randomBytes(MAX_SEALED);
    const o = new Opener(keys.s2d);
    const got = o.push(Buffer.concat(sealed(keys.s2d, [big])));
    expect(got).toHaveLength(1);
    expect(got[0]!.equals(big)).toBe(true);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(MAX_SEALED + 1);
    expect(() => new Opener(keys.s2d).push(head)).toThrow(/claims/);
  });

  test("libcrypto in place and node:crypto seal the same bytes, and each opens the other's", () => {
    expect(haveNativeGcm).toBe(true); // libssl3 is on every host here; without it node:crypto serves alone
    const native = sealed(keys.s2d, frames, "native");
    const node = sealed(keys.s2d, frames, "node");
    expect(native.map((b) => b.toString("hex"))).toEqual(node.map((b) => b.toString("hex")));
    for (const [records, engine] of [[native, "node"], [node, "native"]] as const) {
      const o = new Opener(keys.s2d, Buffer.allocUnsafe, engine);
      expect(o.push(Buffer.concat(records)).map((b) => b.toString("hex"))).toEqual(frames.map((b) => b.toString("hex")));
    }
  });

  test("one flipped bit anywhere in a record (its length, its ciphertext or its tag) is refused at that record", () => {
    const records = sealed(keys.s2d, frames);
    const second = records[1]!;
    for (const at of [0, 3, 4, 1000, second.length - 1]) {
      const wire = Buffer.concat(records.map((r) => Buffer.from(r)));
      wire[records[0]!.length + at]! ^= 0x10;
      const o = new Opener(keys.s2d);
      expect(o.push(wire.subarray(0, records[0]!.length))).toHaveLength(1); // the first still opens
      expect(() => o.push(wire.subarray(records[0]!.length))).toThrow(SealError);
    }
  });

  test("a record replayed, dropped or put out of order is refused; so is one sealed with another key or for the other direction", () => {
    const [a, b, c] = sealed(keys.s2d, frames);
    const refused = (key: Buffer, ...rs: Buffer[]) => {
      const o = new Opener(key);
      try {
        for (const r of rs) o.push(r);
      } catch (err) {
        return err instanceof SealError && /failed authentication/.test(err.message);
      }
      return false;
    };
    expect(refused(keys.s2d, a!, a!)).toBe(true); // replayed
    expect(refused(keys.s2d, a!, c!)).toBe(true); // b dropped
    expect(refused(keys.s2d, b!, a!)).toBe(true); // reordered
    expect(refused(keys.d2s, a!)).toBe(true); // reflected: the other direction's key
    expect(refused(sessionKeys(secret, "aa", "cc").s2d, a!)).toBe(true); // another session
    expect(refused(keys.s2d, a!, b!, c!)).toBe(false);
  });

  test("a channel refuses frames that came in the clear after authentication", () => {
    const ch = new Channel({ write: (b: Uint8Array) => b.length, end() {} });
    ch.onData(new Uint8Array(3)); // part of a plaintext frame, before the switch
    expect(() => ch.sealInbound(keys.s2d)).toThrow("in the clear after authentication");
  });

  test("two channels: sealed both ways, and bytes that are not a sealed record fail the receiver", async () => {
    const toB: Uint8Array[] = [];
    const a = new Channel({ write: (x: Uint8Array) => (toB.push(Uint8Array.from(x)), x.length), end() {} });
    const b = new Channel({ write: (x: Uint8Array) => x.length, end() {} });
    a.sealOutbound(keys.s2d);
    b.sealInbound(keys.s2d);
    await a.send(msg.ack(5, 6n, 0, 1));
    for (const x of toB) b.onData(x);
    const m = await b.recv(1000);
    expect(m.type).toBe(MsgType.ACK);
    b.onData(Buffer.from("not sealed at all, just text"));
    await expect(b.recv(1000)).rejects.toThrow(SealError);
  });
});

describe("sealing, between real processes", () => {
  /** A 64 KiB random marker block written into the image at 8 MiB. */
  function markImage(image: string): Buffer {
    const marker = randomBytes(64 * 1024);
    const fd = openSync(image, "r+");
    writeSync(fd, marker, 0, marker.length, 8 * MiB);
    closeSync(fd);
    return marker;
  }

  /** Whether any 32-byte window of the marker (at 4 KiB steps, and the tail) is in the capture. */
  function leaks(capture: Buffer, marker: Buffer): boolean {
    for (let at = 0; at + 32 <= marker.length; at += 4096) if (capture.includes(marker.subarray(at, at + 32))) return true;
    return capture.includes(marker.subarray(marker.length - 32));
  }

  for (const secure of [true, false]) {
    test(secure ? "with a secret, the stream a recorder on the path keeps holds no piece of the disk" : "control: --insecure, the same recorder finds the marker (so the check can fail)", async () => {
      const h = await hosts(32, 16);
      const marker = markImage(h.image);
      await withPair(
        h,
        async ({ dst }) => {
          const chunks: Buffer[] = [];
          const proxy = startProxy(dst.port, { tap: (d) => (chunks.push(Buffer.from(d)), d) });
          try {
            const run = await source(h, proxy.port, [...(secure ? ["--secret-file", h.secret] : ["--insecure"]), "--compress", "none"]);
            expect(run.code, run.stderr).toBe(0);
          } finally {
            proxy.stop();
          }
          expect(leaks(Buffer.concat(chunks), marker)).toBe(!secure);
        },
        secure ? ["--secret-file", h.secret] : ["--insecure"],
      );
    }, 60_000);
  }

  test("a link cut mid-bulk under a random-4K writer: the source resumes on a new connection with new keys, and ends identical with nothing acknowledged lost", async () => {
    const h = await hosts(64, 64);
    await withPair(
      h,
      async ({ srv, dst }) => {
        const proxy = startProxy(dst.port);
        const w = await stressWriter(srv.socket, { pattern: "random4k", bytes: 32 * MiB });
        try {
          const run = spawnSource(h, proxy.port, ["--secret-file", h.secret, "--compress", "none", "--bandwidth", "200mbit"]);
          while (proxy.bytes < 24 * MiB) await Bun.sleep(20);
          proxy.cut();
          const result = await run.result();
          await w.stop();
          expectResumedOnce(result);
          await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
        } finally {
          proxy.stop();
        }
      },
      ["--secret-file", h.secret],
    );
  }, 90_000);

  test("sealed, under a writer of 8 MiB requests (a guest's merged writes): each write's delta is one frame over the bulk's 4 MiB, and the disk moves whole", async () => {
    const h = await hosts(64, 32);
    await withPair(
      h,
      async ({ srv, dst }) => {
        const w = await stressWriter(srv.socket, { pattern: "seq8m", bytes: 48 * MiB });
        // 50 Mbit/s: the bulk takes ~5 s, so writes land behind its cursor (whole deltas), not
        // only ahead of it (at 200 Mbit/s a 1.3 s copy once sent none).
        const run = await source(h, dst.port, ["--secret-file", h.secret, "--deltas", "paper", "--bandwidth", "50mbit", "--json"]);
        await w.stop();
        expect(run.code, run.stderr).toBe(0);
        const done = JSON.parse(run.stdout.trim().split("\n").at(-1)!);
        expect(done.deltaCount, JSON.stringify(done)).toBeGreaterThan(0);
        await expectMovedWhole(h, w.acked, srv.socket, dst.socket);
      },
      ["--secret-file", h.secret],
    );
  }, 90_000);

  test("one bit flipped mid-bulk on the path: the destination refuses that frame, the migration stops with a message naming authentication, the source stays writable", async () => {
    const h = await hosts(64, 48);
    await withPair(
      h,
      async ({ srv, dst }) => {
        let flipped = false;
        const proxy = startProxy(dst.port, {
          tap: (d, at) => {
            const target = 8 * MiB; // well into the bulk copy, long before the hand-off
            if (flipped || at + d.length <= target) return d;
            flipped = true;
            const out = Buffer.from(d);
            out[Math.max(0, target - at)]! ^= 0x04;
            return out;
          },
        });
        try {
          const run = await source(h, proxy.port, ["--secret-file", h.secret, "--compress", "none", "--json"]);
          expect(flipped).toBe(true);
          expect(run.code).not.toBe(0);
          // Named where it happened: in the bulk copy, not at the hand-off.
          expect(run.stderr).toMatch(/wanmig: bulk: the destination aborted: sealed frame \d+ failed authentication/);
          expect(run.stdout).not.toContain('"phase":"handoff"');
          expect(run.stderr.trim().split("\n").some((l) => /^\s+at /.test(l))).toBe(false); // no stack trace
        } finally {
          proxy.stop();
        }
        expect(dst.stderr()).toMatch(/sealed frame \d+ failed authentication/);
        expect(await writable(srv.socket)).toBe(true);
        const st = await srv.ctl.status();
        expect(st.mode).toBe("normal");
        expect(st.recording.active).toBe(false);
      },
      ["--secret-file", h.secret],
    );
  }, 60_000);
});
