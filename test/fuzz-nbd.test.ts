// Fuzzing serve's NBD server, bounded in time (WANMIG_FUZZ_MS, 4 s by default; a failure
// prints its seed, WANMIG_FUZZ_SEED replays it). Raw clients send random and mutated
// greetings, options and requests: garbage, unknown options, oversize and torn option
// data, unknown commands and flags, offsets at and past the end, zero and oversize
// lengths, bad magics, torn payloads, abrupt disconnects. Valid writes go between them,
// each applied to an in-memory model of the disk once the server acknowledges it. The
// server answers or closes as the spec says, never crashes, a well-behaved client beside
// the fuzzers keeps working throughout, and at the end the image is the model.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { Cmd, CmdFlag, IHAVEOPT, NbdErr, Opt, OPTION_MAX_LEN, REQUEST_MAGIC } from "../src/disk/nbd/nbd-protocol.ts";
import { RawNbd } from "./helpers/raw-nbd.ts";
import { RawSocket } from "./helpers/raw-socket.ts";
import { caseCounter, FUZZ_MS, FUZZ_SEED, prng } from "./helpers/fuzz.ts";
import { randomFile, serveForSuite } from "./helpers/serve-process.ts";

const SIZE = 4 * 1024 * 1024;
/** The well-behaved client owns the first half; fuzzers' valid writes go to the second. */
const HALF = SIZE / 2;


let model: Buffer;
// One serve for the file, on an image of random data; the model is that data, then every acknowledged write.
const suite = serveForSuite(async (image) => {
  await randomFile(image, SIZE);
  model = readFileSync(image);
});


type Outcome = "answered" | "closed";

/** Waits for the server to close this connection (true) or not within `ms`. */
const closes = (s: RawSocket, ms = 1000) => s.waitClosed(ms);

describe("fuzzing the NBD server", () => {
  test(`random and mutated clients for ${FUZZ_MS} ms beside a well-behaved one: answers or closes as the spec says, never crashes; the image is the model`, async () => {
    const r = prng(FUZZ_SEED);
    const { count, total, report } = caseCounter();
    let stop = false;

    // The well-behaved client: writes and reads back its half all along.
    const good = await RawNbd.connect(suite.srv.socket);
    await good.go();
    const goodLoop = (async () => {
      const g = prng(FUZZ_SEED ^ 0x5bd1e995);
      let n = 0;
      while (!stop) {
        const off = g.int(HALF / 512) * 512;
        const len = Math.min(HALF - off, 512 * (1 + g.int(64)));
        const data = g.bytes(len);
        expect(await good.write(off, data)).toBe(0);
        data.copy(model, off);
        const back = await good.read(off, len);
        expect(back.error).toBe(0);
        expect(back.data!.equals(data)).toBe(true);
        n++;
      }
      return n;
    })();

    const end = Date.now() + FUZZ_MS;
    try {
      while (Date.now() < end) {
        const kind = r.pick(["greeting", "option", "transmission"] as const);
        if (kind === "greeting") {
          // Garbage where the client flags and first option go: refused by closing.
          const s = await RawSocket.unix(suite.srv.socket);
          await s.read(18);
          const junk = r.bytes(4 + r.int(64));
          junk.writeUInt32BE((junk.readUInt32BE(0) | 0x80000000) >>> 0, 0); // unknown client flags for sure
          s.write(junk);
          expect(await closes(s)).toBe(true);
          count("greeting: garbage client flags");
          continue;
        }
        const c = await RawNbd.connect(suite.srv.socket);
        if (kind === "option") {
          const what = r.pick(["unknown", "oversize", "torn", "bad magic"] as const);
          if (what === "unknown") {
            c.sendOption(1000 + r.int(1000), r.bytes(r.int(256)));
            const rep = await c.readOptionReply();
            expect(rep.type).toBe(0x80000001); // NBD_REP_ERR_UNSUP: the spec's answer to an unknown option
            count("option: unknown, answered ERR_UNSUP");
            c.sock.end();
          } else if (what === "oversize") {
            c.sendOption(r.pick([Opt.GO, Opt.INFO, Opt.LIST, Opt.SET_META_CONTEXT]), Buffer.alloc(0));
            await c.readOptionReply().catch(() => undefined);
            const h = Buffer.alloc(16);
            h.writeBigUInt64BE(IHAVEOPT, 0);
            h.writeUInt32BE(Opt.GO, 8);
            h.writeUInt32BE(OPTION_MAX_LEN + 1 + r.int(2 ** 30), 12);
            c.sock.write(h);
            expect(await closes(c.sock)).toBe(true);
            count("option: oversize length, closed");
          } else if (what === "torn") {
            const h = Buffer.alloc(16);
            h.writeBigUInt64BE(IHAVEOPT, 0);
            h.writeUInt32BE(r.pick([Opt.GO, Opt.INFO, Opt.SET_META_CONTEXT]), 8);
            h.writeUInt32BE(100 + r.int(1000), 12);
            c.sock.write(Buffer.concat([h, r.bytes(r.int(100))]));
            c.sock.end(); // gone mid-option
            count("option: torn, client gone");
          } else {
            c.sock.write(r.bytes(16));
            expect(await closes(c.sock)).toBe(true);
            count("option: bad magic, closed");
          }
          continue;
        }
        await c.go();
        let outcome: Outcome = "answered";
        for (let i = 0, n = 1 + r.int(20); i < n && outcome === "answered"; i++) {
          const what = r.pick(["write", "write", "past end", "unknown command", "bad flags", "zero length", "oversize", "torn write", "bad magic", "read"] as const);
          if (what === "write") {
            const off = HALF + r.int(HALF / 512) * 512;
            const len = Math.min(SIZE - off, 1 + r.int(65536));
            const data = r.bytes(len);
            expect(await c.write(off, data)).toBe(0);
            data.copy(model, off);
            count("write: valid, acknowledged, in the model");
          } else if (what === "read") {
            const off = r.int(SIZE - 1);
            const len = 1 + r.int(Math.min(65536, SIZE - off));
            const got = await c.read(off, len);
            expect(got.error).toBe(0);
            // The other half may be under a write at this moment: only the fuzzers' own half is checked here.
            if (off >= HALF) expect(got.data!.equals(model.subarray(off, off + len))).toBe(true);
            count("read: valid");
          } else if (what === "past end") {
            const write = r.next() < 0.5;
            const len = 1 + r.int(8192);
            const off = SIZE - len + 1 + r.int(2 ** 20); // ends past the disk, by 1 byte or a MiB
            c.request(write ? Cmd.WRITE : Cmd.READ, off, len, write ? { payload: r.bytes(len) } : {});
            expect((await c.reply()).error).toBe(write ? NbdErr.ENOSPC : NbdErr.EINVAL);
            count(`${write ? "write" : "read"}: past the end, refused, connection goes on`);
          } else if (what === "unknown command") {
            c.request(12 + r.int(200), r.int(SIZE), r.int(4096));
            expect((await c.reply()).error).toBe(NbdErr.EINVAL);
            count("command: unknown, EINVAL");
          } else if (what === "bad flags") {
            c.request(Cmd.READ, 0, 512, { flags: CmdFlag.NO_HOLE | (1 << (5 + r.int(10))) });
            expect((await c.reply()).error).toBe(NbdErr.EINVAL);
            count("command: bad flags, EINVAL");
          } else if (what === "zero length") {
            c.request(r.pick([Cmd.READ, Cmd.WRITE]), HALF, 0);
            expect((await c.reply()).error).toBe(NbdErr.EINVAL);
            count("command: zero length, EINVAL");
          } else if (what === "oversize") {
            c.request(Cmd.READ, 0, 32 * 1024 * 1024 + 1 + r.int(1000));
            expect((await c.reply()).error).toBe(NbdErr.EINVAL);
            count("read: over the 32 MiB maximum, EINVAL");
          } else if (what === "torn write") {
            // A write header, part of its payload, and the client is gone: nothing of it may land.
            const off = HALF + r.int(HALF / 512) * 512;
            const len = 4096 + r.int(60000);
            const h = Buffer.alloc(28);
            h.writeUInt32BE(REQUEST_MAGIC, 0);
            h.writeUInt16BE(Cmd.WRITE, 6);
            h.writeBigUInt64BE(BigInt(off), 16);
            h.writeUInt32BE(Math.min(len, SIZE - off), 24);
            c.sock.write(Buffer.concat([h, r.bytes(r.int(Math.min(len, SIZE - off)))]));
            c.sock.end();
            outcome = "closed";
            count("write: torn payload, client gone");
          } else {
            c.sock.write(r.bytes(28));
            expect(await closes(c.sock)).toBe(true);
            outcome = "closed";
            count("request: bad magic, closed");
          }
        }
        if (outcome === "answered") {
          if (r.next() < 0.5) c.disconnect();
          else c.sock.end(); // abrupt: no NBD_CMD_DISC
        }
      }
    } catch (err) {
      throw new Error(`fuzz failed with seed ${FUZZ_SEED} (WANMIG_FUZZ_SEED=${FUZZ_SEED} replays it): ${(err as Error).message}`, { cause: err });
    } finally {
      stop = true;
    }
    const goodOps = await goodLoop;
    good.disconnect();
    const cases = total();
    console.log(`nbd fuzz: seed ${FUZZ_SEED}, ${cases} cases in ${FUZZ_MS} ms, ${goodOps} write+read rounds of the well-behaved client\n${report()}`);
    expect(cases).toBeGreaterThan(50);
    // Alive, and the disk is what the acknowledged writes made it.
    expect((await suite.srv.ctl.status()).size).toBe(SIZE);
    await Bun.sleep(100); // torn writes' connections are gone
    expect(readFileSync(suite.image).equals(model)).toBe(true);
  }, FUZZ_MS + 60_000);
});
