// A TCP relay that adds latency in user space (this machine has no netem): every chunk
// read from one side is held for --delay-ms and then written to the other, in order, in
// both directions. Round-trip time = 2 × delay. Chunks wait in a timestamped queue (one
// timer per direction, armed for the head), so a chunk's delay overlaps the next ones'
// and the throughput is not cut. Backpressure: a side stops being read while more than
// --max-buffer-kib bytes of its stream are held here (delayed or waiting for the other
// side to drain), so the relay holds at most that per direction. The buffer must exceed
// rate × delay, or it caps the rate.
//
//   bun scripts/bench/lib/delay-proxy.ts --listen 127.0.0.1:7100 --to 10.77.0.2:7007 --delay-ms 50 [--max-buffer-kib 256] [--wait-for-target-s 0]
//
// Prints `listening on HOST:PORT` on stderr when ready, and one JSON line per closed
// connection on stdout when the client side closes (or at SIGTERM, for those still open):
// {"event":"closed","up":BYTES,"down":BYTES} (up = client → target).

import type { Socket } from "bun";
import { writeSync } from "node:fs";
import { parseArgs } from "node:util";

interface Side {
  conn: Conn;
}

/** One direction of a connection: bytes read from `from`, written to `to` after the delay. */
class Pipe {
  private q: { due: number; buf: Uint8Array }[] = [];
  private held = 0;
  private timer?: ReturnType<typeof setTimeout>;
  private blocked = false;
  private paused = false;
  ended = false;
  private endPassed = false;
  bytes = 0;
  to?: Socket<Side>;

  constructor(
    private readonly from: Socket<Side>,
    private readonly delayMs: number,
    private readonly maxHeld: number,
    private readonly onEnded: () => void,
  ) {}

  push(chunk: Uint8Array): void {
    this.q.push({ due: performance.now() + this.delayMs, buf: chunk.slice() });
    this.held += chunk.length;
    this.bytes += chunk.length;
    if (this.held > this.maxHeld && !this.paused) {
      this.paused = true;
      this.from.pause();
    }
    this.schedule();
  }

  /** The reading side closed: pass on what is held, then close the writing side. */
  end(): void {
    this.ended = true;
    this.schedule();
  }

  /** The writing side drained its buffer. */
  drain(): void {
    this.blocked = false;
    this.flush();
  }

  /** The writing side is gone: drop everything. */
  discard(): void {
    this.q = [];
    this.held = 0;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  schedule(): void {
    if (this.timer || this.blocked || !this.to) return;
    if (!this.q.length) {
      if (this.ended && !this.endPassed) {
        this.endPassed = true;
        this.onEnded();
      }
      return;
    }
    const wait = this.q[0]!.due - performance.now();
    if (wait <= 0) this.flush();
    else this.timer = setTimeout(() => this.flush(), Math.max(1, Math.ceil(wait)));
  }

  private flush(): void {
    this.timer = undefined;
    if (!this.to) return;
    const now = performance.now();
    while (this.q.length && this.q[0]!.due <= now) {
      const head = this.q[0]!;
      const n = this.to.write(head.buf);
      if (n < 0) {
        this.discard();
        return;
      }
      this.held -= n;
      if (n < head.buf.length) {
        head.buf = head.buf.subarray(n);
        this.blocked = true; // resumed by the writing side's drain
        break;
      }
      this.q.shift();
    }
    if (this.paused && this.held <= this.maxHeld / 2) {
      this.paused = false;
      this.from.resume();
    }
    this.schedule();
  }
}

class Conn {
  up: Pipe;
  down?: Pipe;
  server?: Socket<Side>;

  constructor(
    readonly client: Socket<Side>,
    private readonly delayMs: number,
    private readonly maxHeld: number,
  ) {
    this.up = new Pipe(client, delayMs, maxHeld, () => this.server?.end());
  }

  connected(server: Socket<Side>): void {
    this.server = server;
    this.up.to = server;
    this.down = new Pipe(server, this.delayMs, this.maxHeld, () => this.client.end());
    this.down.to = this.client;
    this.up.schedule();
  }

  onClose(isClient: boolean): void {
    if (isClient) {
      this.up.end();
      this.down?.discard();
      report(this); // both counts are final: bytes are counted as they are read
    } else {
      this.down?.end();
      this.up.discard();
    }
  }
}

const open = new Set<Conn>();

function report(c: Conn): void {
  if (!open.delete(c)) return;
  writeSync(1, `${JSON.stringify({ event: "closed", up: c.up.bytes, down: c.down?.bytes ?? 0 })}\n`); // synchronous: survives process.exit
}

function hostPort(spec: string): { hostname: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(spec);
  if (!m) throw new Error(`cannot read ${JSON.stringify(spec)}; write HOST:PORT`);
  return { hostname: m[1]!.replace(/^\[|\]$/g, ""), port: Number(m[2]) };
}

/**
 * `waitForTargetMs`: a refused connection to the target is tried again for this long while
 * the client waits (its bytes held), as for a QEMU that listens only once its disk is there;
 * without it the client is dropped at once, after it may already have written.
 */
export function startDelayProxy(o: { listen: string; to: string; delayMs: number; maxBufferBytes: number; waitForTargetMs?: number }) {
  const target = hostPort(o.to);
  const serverHandlers = {
    data(s: Socket<Side>, d: Uint8Array) {
      s.data.conn.down?.push(d);
    },
    drain(s: Socket<Side>) {
      s.data.conn.up.drain();
    },
    close(s: Socket<Side>) {
      s.data.conn.onClose(false);
    },
    error() {},
  };
  return Bun.listen<Side>({
    ...hostPort(o.listen),
    data: undefined as unknown as Side,
    socket: {
      open(client) {
        const conn = new Conn(client, o.delayMs, o.maxBufferBytes);
        open.add(conn);
        client.data = { conn };
        client.setNoDelay(true);
        const until = Date.now() + (o.waitForTargetMs ?? 0);
        const connect = (): void =>
          void Bun.connect<Side>({ ...target, data: { conn }, socket: { ...serverHandlers, open: (s) => (s.setNoDelay(true), conn.connected(s)) } }).catch((err) => {
            if (Date.now() < until) return void setTimeout(connect, 200);
            console.error(`delay-proxy: cannot connect to ${o.to}: ${(err as Error).message}`);
            client.end();
          });
        connect();
      },
      data(s, d) {
        s.data.conn.up.push(d);
      },
      drain(s) {
        s.data.conn.down?.drain();
      },
      close(s) {
        s.data.conn.onClose(true);
      },
      error() {},
    },
  });
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      listen: { type: "string", default: "127.0.0.1:0" },
      to: { type: "string" },
      "delay-ms": { type: "string", default: "50" },
      "max-buffer-kib": { type: "string", default: "256" },
      "wait-for-target-s": { type: "string", default: "0" },
    },
  });
  if (!values.to) {
    console.error("usage: bun scripts/bench/lib/delay-proxy.ts --listen HOST:PORT --to HOST:PORT --delay-ms D [--max-buffer-kib N]");
    process.exit(2);
  }
  const l = startDelayProxy({ listen: values.listen!, to: values.to, delayMs: Number(values["delay-ms"]), maxBufferBytes: Number(values["max-buffer-kib"]) * 1024, waitForTargetMs: Number(values["wait-for-target-s"]) * 1000 });
  console.error(`delay-proxy: listening on ${l.hostname}:${l.port}, to ${values.to}, ${values["delay-ms"]} ms each way`);
  // Stopped with connections still open: their counts so far.
  for (const sig of ["SIGTERM", "SIGINT"] as const)
    process.on(sig, () => {
      for (const c of [...open]) report(c);
      l.stop(true);
      process.exit(0);
    });
}
