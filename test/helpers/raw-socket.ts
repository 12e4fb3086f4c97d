// A byte-exact client socket for tests that must send what no well-behaved client sends.
import type { Socket } from "bun";
import { ByteQueue } from "../../src/util/byte-queue.ts";

export class RawSocket {
  private q = new ByteQueue();
  private waiters: (() => void)[] = [];
  private unsent: Uint8Array[] = [];
  private ending = false;
  closed = false;
  private constructor(private socket: Socket<unknown>) {}

  static unix(path: string): Promise<RawSocket> {
    return RawSocket.open({ unix: path });
  }

  static tcp(hostname: string, port: number): Promise<RawSocket> {
    return RawSocket.open({ hostname, port });
  }

  private static async open(to: { unix: string } | { hostname: string; port: number }): Promise<RawSocket> {
    let self!: RawSocket;
    const socket = {
      data(_s: unknown, d: Uint8Array) {
        self.q.push(Uint8Array.from(d));
        self.wake();
      },
      drain() {
        self.flush();
      },
      close() {
        self.closed = true;
        self.wake();
      },
      error() {
        self.closed = true;
        self.wake();
      },
    };
    const s = "unix" in to ? await Bun.connect({ unix: to.unix, socket }) : await Bun.connect({ hostname: to.hostname, port: to.port, socket });
    self = new RawSocket(s as Socket<unknown>);
    return self;
  }

  private wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /**
   * Sends b in order after what is queued. What the kernel does not take now goes out on
   * drain: spinning on a full socket would stall every other socket of this process (a
   * test's proxy, its "link", stood still while a 1 MiB write waited on a rate cap).
   */
  write(b: Uint8Array): void {
    if (this.closed) throw new Error("socket closed");
    if (this.unsent.length === 0) {
      const n = this.socket.write(b);
      if (n < 0) throw new Error("socket closed");
      if (n === b.length) return;
      b = b.subarray(n);
    }
    this.unsent.push(Uint8Array.from(b)); // the caller may reuse its buffer
  }

  private flush(): void {
    while (this.unsent.length) {
      const b = this.unsent[0]!;
      const n = this.socket.write(b);
      if (n < 0) return;
      if (n < b.length) {
        this.unsent[0] = b.subarray(n);
        return;
      }
      this.unsent.shift();
    }
    if (this.ending) this.socket.end();
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

  /** Ends the stream once what is queued has gone out. */
  end(): void {
    this.ending = true;
    if (this.unsent.length === 0) this.socket.end();
  }
}
