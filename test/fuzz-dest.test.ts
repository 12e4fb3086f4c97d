// Fuzzing dest's decoder and handshake, bounded in time (WANMIG_FUZZ_MS, 4 s by default;
// WANMIG_FUZZ_SEED replays a failure). Clients that do not know the secret send garbage,
// mutated HELLO frames (with the checksum broken, or mended so the payload itself is
// fuzzed), frames that must not come before authentication, oversize and torn frames,
// wrong proofs, and the proof of an earlier session replayed. dest never crashes, never
// touches the image before a source has authenticated, and keeps waiting: the real source
// migrates afterwards, under a writer, byte-identical.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { proof } from "../src/net/auth.ts";
import { encodeFrame, FRAME_HEADER_LEN, FRAME_TRAILER_LEN, FrameDecoder, type Message, msg, MsgType } from "../src/net/protocol.ts";
import { expectMovedWhole, hosts, MiB, removeHosts, source, withPair } from "./helpers/migration.ts";
import { RawSocket } from "./helpers/raw-socket.ts";
import { caseCounter, FUZZ_MS, FUZZ_SEED, prng } from "./helpers/fuzz.ts";
import { stressWriter } from "./helpers/stress-writer.ts";
import { readFileSync } from "node:fs";


afterAll(() => removeHosts());


/** Reads one frame from the destination (throws if it closes first). */
async function recvFrame(s: RawSocket): Promise<Message> {
  const head = await s.read(FRAME_HEADER_LEN, 2000);
  const rest = await s.read(head.readUInt32BE(8) + FRAME_TRAILER_LEN, 2000);
  return new FrameDecoder().push(Buffer.concat([head, rest]))[0]!;
}

/** Sets a frame's CRC right after its bytes were changed: the decoder then reads the payload. */
function mendCrc(f: Buffer): Buffer {
  const end = f.length - FRAME_TRAILER_LEN;
  f.writeUInt32BE(Bun.hash.crc32(f.subarray(0, end)) >>> 0, end);
  return f;
}

describe("fuzzing dest's decoder and handshake", () => {
  test(`hostile clients for ${FUZZ_MS} ms: dest never crashes, never touches the image before authentication, and the real source migrates afterwards`, async () => {
    const h = await hosts(32, 16);
    await withPair(
      h,
      async ({ srv, dst }) => {
        const r = prng(FUZZ_SEED);
        const { count, total, report } = caseCounter();
        const secret = readFileSync(h.secret, "utf8").trim();
        const hello = () => msg.hello({ nonce: r.bytes(32).toString("hex"), name: "vm", size: 32 * MiB, blockSize: 65536, recording: `vm.${r.int(1e9)}.1.deltas` });
        /** The frame decoder's answer to what we sent: it closes, or says ERROR and closes. */
        const refused = async (s: RawSocket) => {
          const closed = await s.waitClosed(2000);
          if (!closed) throw new Error("dest kept a connection open after a frame it cannot accept");
        };
        let replay: { hello: Message; proof: string } | undefined;
        const end = Date.now() + FUZZ_MS;
        try {
          while (Date.now() < end) {
            const s = await RawSocket.tcp("127.0.0.1", dst.port);
            const what = r.pick(["garbage", "mutated hello", "mended hello", "before auth", "oversize", "torn", "wrong proof", "replayed proof"] as const);
            if (what === "garbage") {
              s.write(r.bytes(FRAME_HEADER_LEN + r.int(512))); // fewer than a header's bytes are a frame still arriving
              await refused(s);
            } else if (what === "mutated hello" || what === "mended hello") {
              const f = encodeFrame(hello());
              // Not the length field: a longer length is a frame still arriving (the "torn" case).
              for (let i = 0, n = 1 + r.int(4); i < n; i++) {
                const at = r.int(f.length - 4);
                f[at < 8 ? at : at + 4]! ^= 1 << r.int(8);
              }
              s.write(what === "mended hello" ? mendCrc(f) : f);
              // A mended mutation may still be a HELLO the destination takes: then it proves
              // itself and waits for AUTH, which a fuzzer cannot give.
              const m = await recvFrame(s).catch(() => undefined);
              if (m?.type === MsgType.WELCOME) s.write(encodeFrame(msg.auth(r.bytes(32).toString("hex"))));
              await refused(s);
            } else if (what === "before auth") {
              const early = r.pick([msg.bulk(0, 4096, r.bytes(4096)), msg.zero(0, 65536), msg.barrier(1n, 32 * MiB, ""), msg.delta({ seq: 1n, op: 1, offset: 0, length: 4, compressed: false, data: r.bytes(4) }), msg.auth("00")]);
              s.write(encodeFrame(early));
              await refused(s);
            } else if (what === "oversize") {
              const f = encodeFrame(hello());
              f.writeUInt32BE(0x7fffffff - r.int(1000), 8);
              s.write(f);
              await refused(s);
            } else if (what === "torn") {
              const f = encodeFrame(hello());
              s.write(f.subarray(0, r.int(f.length)));
              s.end();
            } else {
              const hi = hello();
              s.write(encodeFrame(hi));
              const w = await recvFrame(s);
              expect(w.type).toBe(MsgType.WELCOME);
              if (w.type !== MsgType.WELCOME || hi.type !== MsgType.HELLO) throw new Error("unreachable");
              let p = r.bytes(32).toString("hex");
              // Replayed: a proof that was right for an earlier session's WELCOME (its nonce differs now).
              if (what === "replayed proof" && replay && replay.hello.type === MsgType.HELLO) {
                s.end();
                const s2 = await RawSocket.tcp("127.0.0.1", dst.port);
                s2.write(encodeFrame(replay.hello));
                expect((await recvFrame(s2)).type).toBe(MsgType.WELCOME);
                s2.write(encodeFrame(msg.auth(replay.proof)));
                const e = await recvFrame(s2).catch(() => undefined);
                expect(e?.type === MsgType.ERROR || e === undefined).toBe(true);
                await refused(s2);
                count(what);
                continue;
              }
              replay = { hello: hi, proof: proof(Buffer.from(secret), "source", w.nonce, hi.nonce) };
              s.write(encodeFrame(msg.auth(p)));
              const e = await recvFrame(s).catch(() => undefined);
              expect(e?.type === MsgType.ERROR || e === undefined).toBe(true);
              await refused(s);
              p = "";
            }
            count(what);
            if (existsSync(h.destImage)) throw new Error(`the image was created after a "${what}" client, before any source authenticated`);
          }
        } catch (err) {
          throw new Error(`fuzz failed with seed ${FUZZ_SEED} (WANMIG_FUZZ_SEED=${FUZZ_SEED} replays it): ${(err as Error).message}`, { cause: err });
        }
        const cases = total();
        console.log(`dest fuzz: seed ${FUZZ_SEED}, ${cases} cases in ${FUZZ_MS} ms\n${report()}`);
        expect(cases).toBeGreaterThan(50);
        expect(dst.proc.exitCode).toBeNull();
        expect(existsSync(h.destImage)).toBe(false);
        // The real source, under a writer: dest waited for it. Ahead of it, strangers that
        // hold their connections: two say nothing, two say HELLO and never prove themselves.
        // Handshakes run side by side, so they hold nobody up (one at a time, each would
        // have held the real source for dest's 30 s wait, past the source's own).
        const stalled = await Promise.all([0, 1, 2, 3].map(() => RawSocket.tcp("127.0.0.1", dst.port)));
        stalled[2]!.write(encodeFrame(hello()));
        stalled[3]!.write(encodeFrame(hello()));
        const wr = await stressWriter(srv.socket, { pattern: "random4k", bytes: 16 * MiB });
        const t0 = Date.now();
        const run = await source(h, dst.port, ["--secret-file", h.secret]);
        await wr.stop();
        expect(run.code, run.stderr).toBe(0);
        expect(Date.now() - t0).toBeLessThan(25_000); // not behind the strangers' 30 s
        for (const s of stalled) s.end();
        await expectMovedWhole(h, wr.acked, srv.socket, dst.socket);
      },
      ["--secret-file", h.secret],
    );
  }, FUZZ_MS + 60_000);
});
