// A channel reusing its data frames' buffers (channel.ts, buffer-pool.ts): what reaches the
// peer is every frame as sent, whether the socket takes a frame whole, in part, or not at
// all for a while, and with sends overlapping under --bandwidth.
import { describe, expect, test } from "bun:test";
import { Channel } from "../src/net/channel.ts";
import { TokenBucket } from "../src/net/rate.ts";
import { FrameDecoder, msg, MsgType } from "../src/net/protocol.ts";

/** A socket that copies what it takes, and takes all, part or nothing at random; drains later. */
function choppySocket() {
  const got: Uint8Array[] = [];
  let ch!: Channel;
  const writer = {
    write(b: Uint8Array) {
      const r = Math.random();
      const n = r < 0.5 ? b.length : r < 0.8 ? Math.floor(b.length * Math.random()) : 0;
      got.push(Uint8Array.from(b.subarray(0, n)));
      if (n < b.length) setTimeout(() => ch.onDrain(), 1);
      return n;
    },
    end() {},
  };
  ch = new Channel(writer, true);
  /** Resolves once the socket has taken every byte sent. */
  const settled = async () => {
    while (got.reduce((n, b) => n + b.length, 0) < ch.bytesSent) await Bun.sleep(5);
  };
  return { ch, got, settled };
}

function received(got: Uint8Array[]) {
  const d = new FrameDecoder();
  return d.push(Buffer.concat(got)).map((m) => (m.type === MsgType.BULK ? Buffer.from(m.data) : undefined));
}

describe("Channel: data frames in reused buffers", () => {
  test("200 frames of 256 KiB through a socket that takes them whole, in part or not at all: every one arrives as sent", async () => {
    const { ch, got, settled } = choppySocket();
    const sent: Buffer[] = [];
    const buf = Buffer.alloc(256 * 1024);
    for (let i = 0; i < 200; i++) {
      crypto.getRandomValues(buf.subarray(0, 65536));
      buf.writeUInt32BE(i, 0);
      sent.push(Buffer.from(buf));
      await ch.send(msg.bulk(i * buf.length, buf.length, buf));
    }
    await settled();
    expect(received(got).map((b) => b?.readUInt32BE(0))).toEqual(sent.map((_, i) => i));
    expect(received(got).every((b, i) => b!.equals(sent[i]!))).toBe(true);
  });

  test("sends that overlap (waiting on --bandwidth) never share a buffer", async () => {
    const { ch, got, settled } = choppySocket();
    ch.rate = new TokenBucket(8 * 1024 * 1024); // a 2 MiB burst: most of the 5 MiB waits
    const frames = Array.from({ length: 40 }, (_, i) => Buffer.alloc(128 * 1024, i + 1));
    // One by one until a spare buffer is there, then all at once: each takes it in turn.
    for (let i = 0; i < 4; i++) await ch.send(msg.bulk(i * frames[i]!.length, frames[i]!.length, frames[i]!));
    await Promise.all(frames.slice(4).map((f, i) => ch.send(msg.bulk((i + 4) * f.length, f.length, f))));
    await settled();
    const back = received(got);
    expect(back.length).toBe(40);
    for (const b of back) expect(b!.every((x) => x === b![0])).toBe(true); // no frame holds another's bytes
    expect(new Set(back.map((b) => b![0])).size).toBe(40);
  });
});
