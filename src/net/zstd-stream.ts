// One zstd stream per connection for the bulk copy over a slow link, with a long window
// and long-distance matching (LDM): each bulk run goes as a flushed piece of the stream,
// so it can refer to everything sent in the 32 MiB before it.
//
// Why: a disk repeats itself at distances a 4 MiB frame cannot see (several versions of
// one library, copies of one file). On 100 MiB of /usr/lib shared libraries, measured
// with the zstd CLI and these streams:
//   - 4 MiB frames of their own at level 19: 32.4 MB (the old WAN bulk);
//   - one `zstd -19` file (8 MiB window; the WAN row's "physical limit"): 31.4 MB;
//   - this stream at level 3: 29.3 MB in 0.47 s; at level 9: 26.9 MB in 1.5 s;
//     at level 19: 24.1 MB in 18.6 s.
// A window of 16 MiB gains nothing there (the repeats lie 16-32 MiB apart); 64 MiB gains
// 1 % more for 30 MiB more memory on each side.
//
// The stream is node:zlib's (Bun runs it off the event loop). A piece decodes only after
// every earlier piece, in order: pieces travel on one connection, and a new connection
// (a resume) starts a new stream at both ends. A level change ends the frame and starts
// another (zstd fixes the level of a frame); the old frame's end goes ahead of the new
// frame's first piece, in the same message.

import zlib from "node:zlib";
import { ProtocolError } from "./errors.ts";

const Z = zlib.constants as unknown as Record<string, number>;

/** 32 MiB: the window each end holds. The receiver refuses a stream that asks for more. */
export const STREAM_WINDOW_LOG = 25;
/**
 * zstd's own tables grow with the level, to 64 MiB and more at 19. From level 10 on they are
 * bounded to 2^20 entries: the level-19 stream then keeps 24.06 MB of the 100 MiB above.
 */
const TABLE_LOG = 20;
const BOUNDED_FROM_LEVEL = 10;

/** Errors reach the flush that waits (it listens once); one emitted at another time must not be thrown from the event loop. */
const IGNORED = () => undefined;

function flushed(s: zlib.ZstdCompress | zlib.ZstdDecompress, out: Buffer[], kind: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // A stream destroyed meanwhile (a piece that expanded too far) may never call back.
    const onError = (err: Error) => done(err);
    const onClose = () => done(new Error("the stream was closed"));
    const done = (err?: Error) => {
      s.off("error", onError);
      s.off("close", onClose);
      if (err) reject(err);
      else resolve(out.length === 1 ? out.pop()! : Buffer.concat(out.splice(0)));
    };
    s.once("error", onError);
    s.once("close", onClose);
    s.flush(kind, () => done());
  });
}

/** The sending end: pieces at one level at a time. */
export class StreamDeflater {
  private z?: zlib.ZstdCompress;
  private zLevel = 0;
  private readonly out: Buffer[] = [];

  /** The next piece at `level`: decodable once every earlier piece has been. `data` must stay as it is until this resolves. */
  async piece(data: Uint8Array, level: number): Promise<Buffer> {
    const tail = this.z && this.zLevel !== level ? await this.endFrame() : undefined;
    if (!this.z) {
      const params: Record<number, number> = {
        [Z.ZSTD_c_compressionLevel!]: level,
        [Z.ZSTD_c_windowLog!]: STREAM_WINDOW_LOG,
        [Z.ZSTD_c_enableLongDistanceMatching!]: 1,
      };
      if (level >= BOUNDED_FROM_LEVEL) {
        params[Z.ZSTD_c_hashLog!] = TABLE_LOG;
        params[Z.ZSTD_c_chainLog!] = TABLE_LOG;
      }
      this.z = zlib.createZstdCompress({ params });
      this.zLevel = level;
      this.z.on("data", (b: Buffer) => this.out.push(b));
      this.z.on("error", IGNORED);
    }
    this.z.write(data);
    const piece = await flushed(this.z, this.out, Z.ZSTD_e_flush!);
    return tail?.length ? Buffer.concat([tail, piece]) : piece;
  }

  private async endFrame(): Promise<Buffer> {
    const z = this.z!;
    this.z = undefined;
    const tail = await flushed(z, this.out, Z.ZSTD_e_end!);
    z.destroy();
    return tail;
  }

  close(): void {
    this.z?.destroy();
    this.z = undefined;
  }
}

/** The receiving end: pieces in the order they were made. */
export class StreamInflater {
  private readonly z = zlib.createZstdDecompress({ params: { [Z.ZSTD_d_windowLogMax!]: STREAM_WINDOW_LOG } });
  private readonly out: Buffer[] = [];
  /** What the piece being decoded may expand to: a piece that says 4 MiB and expands to gigabytes is stopped at 4 MiB. */
  private room = 0;

  constructor() {
    this.z.on("data", (b: Buffer) => {
      this.room -= b.length;
      if (this.room >= 0) this.out.push(b);
      else if (!this.z.destroyed) this.z.destroy(); // decode no further
    });
    this.z.on("error", IGNORED);
  }

  /** `data` may be reused once this resolves. */
  async piece(data: Uint8Array, expectedLength: number): Promise<Uint8Array> {
    let out: Buffer | undefined;
    let failure: unknown;
    this.room = expectedLength;
    try {
      this.z.write(data);
      out = await flushed(this.z, this.out, Z.ZSTD_e_flush!);
    } catch (cause) {
      failure = cause;
    }
    if (this.room < 0) throw new ProtocolError("a piece of the zstd stream expands past the length its message gives");
    if (!out) throw new ProtocolError(`a piece of the zstd stream does not decompress (${(failure as Error).message})`, { cause: failure });
    if (out.length !== expectedLength) throw new ProtocolError(`a piece of the zstd stream decompressed to ${out.length} bytes, not ${expectedLength}`);
    return out;
  }

  close(): void {
    this.z.destroy();
  }
}
