// A byte-exact client socket for tests that must send what no well-behaved client sends.
import type { Socket } from "bun";
import { ByteQueue } from "../../src/util/byte-queue.ts";

export class RawSocket {
  private q = new ByteQueue();
  private waiters: (() => void)[] = [];
  closed = false;
  private constructor(private socket: Socket<unknown>) {}

  static async unix(path: string): Promise<RawSocket> {
    let self!: RawSocket;
    const s = await Bun.connect({
      unix: path,
      socket: {
        data(_s, d) {
          self.q.push(Uint8Array.from(d));
          self.wake();
        },
        close() {
          self.closed = true;
          self.wake();
        },
        error() {
          self.closed = true;
          self.wake();
        },
      },
    });
    self = new RawSocket(s as Socket<unknown>);
    return self;
  }

  private wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  write(b: Uint8Array): void {
    let off = 0;
    while (off < b.length) {
      const n = this.socket.write(b.subarray(off));
      if (n < 0) throw new Error("socket closed");
      off += n;
    }
  }

  /** Reads exactly n bytes, or throws if the peer closes first or the timeout passes. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.q.length < n) {
      if (this.closed) throw new Error(`peer closed with ${this.q.length}/${n} bytes read`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for ${n} bytes`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, left);
      });
    }
    return Buffer.from(this.q.take(n));
  }

  /** Resolves true if the peer closes within the timeout. */
  async waitClosed(timeoutMs = 3000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise<void>((r) => {
      this.waiters.push(r);
      setTimeout(r, 50);
    });
    return this.closed;
  }

  end(): void {
    this.socket.end();
  }
}
