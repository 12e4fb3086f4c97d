// A TCP relay between source and dest whose connections the test can cut: a link drop
// in the middle of a migration, with both processes still alive. With `tamper`, it splits
// the source's stream into protocol frames and lets the test drop or alter each one: a
// link that loses or corrupts data in ways TCP's own checksum would not catch.
import type { Socket } from "bun";
import { FRAME_HEADER_LEN, FRAME_TRAILER_LEN } from "../../src/net/protocol.ts";

/** Returns the frame to pass on (the same, altered, or null to drop it). */
export type Tamper = (type: number, frame: Uint8Array) => Uint8Array | null;

function frameSplitter(tamper: Tamper) {
  let buf = new Uint8Array(0);
  return (data: Uint8Array): Uint8Array => {
    const joined = new Uint8Array(buf.length + data.length);
    joined.set(buf);
    joined.set(data, buf.length);
    const out: Uint8Array[] = [];
    let at = 0;
    while (joined.length - at >= FRAME_HEADER_LEN) {
      const view = new DataView(joined.buffer, joined.byteOffset + at);
      const total = FRAME_HEADER_LEN + view.getUint32(8) + FRAME_TRAILER_LEN;
      if (joined.length - at < total) break;
      const kept = tamper(view.getUint8(4), joined.slice(at, at + total));
      if (kept) out.push(kept);
      at += total;
    }
    buf = joined.slice(at);
    return Buffer.concat(out);
  };
}

interface End {
  peer?: Socket<End>;
  queue: Uint8Array[];
  split?: (data: Uint8Array) => Uint8Array;
  /** Nothing is relayed either way, and nothing closed: a stalled flow (what arrived meanwhile is held, not lost). */
  stalled?: boolean;
  held?: Uint8Array[];
}

function forward(from: Socket<End>, to: Socket<End> | undefined, data: Uint8Array): void {
  if (from.data.stalled) {
    (from.data.held ??= []).push(Uint8Array.from(data));
    return;
  }
  if (!to) {
    from.data.queue.push(Uint8Array.from(data)); // the other side is still connecting
    return;
  }
  if (to.data.queue.length) {
    to.data.queue.push(Uint8Array.from(data));
    return;
  }
  const n = to.write(data);
  if (n >= 0 && n < data.length) {
    to.data.queue.push(Uint8Array.from(data.subarray(n)));
    from.pause(); // backpressure: stop reading until the other side drains
  }
}

function drain(s: Socket<End>): void {
  const q = s.data.queue;
  while (q.length) {
    const b = q[0]!;
    const n = s.write(b);
    if (n < 0) return;
    if (n < b.length) {
      q[0] = b.subarray(n);
      return;
    }
    q.shift();
  }
  if (!s.data.stalled) s.data.peer?.resume();
}

/**
 * `tap`: sees every chunk from the source (with its offset in the stream) before it is
 * relayed, and returns what to relay instead: a recorder, or an attacker on the path.
 */
export function startProxy(targetPort: number, opts: { tamper?: Tamper; tap?: (data: Uint8Array, at: number) => Uint8Array } = {}) {
  const live = new Set<Socket<End>>();
  /** The source's connections, in the order they arrived. */
  const clients: Socket<End>[] = [];
  let bytes = 0;

  const listen = (port: number) => Bun.listen<End>({
    hostname: "127.0.0.1",
    port,
    data: { queue: [] },
    socket: {
      open(client) {
        client.data = { queue: [], split: opts.tamper && frameSplitter(opts.tamper) };
        live.add(client);
        clients.push(client);
        Bun.connect<End>({
          hostname: "127.0.0.1",
          port: targetPort,
          data: { queue: [] },
          socket: {
            open(server) {
              server.data = { peer: client, queue: [] };
              client.data.peer = server;
              live.add(server);
              const pending = client.data.queue.splice(0);
              for (const b of pending) forward(client, server, b);
            },
            data(server, d) {
              forward(server, client, d);
            },
            drain,
            close(server) {
              live.delete(server);
              client.end();
            },
          },
        }).catch(() => client.end());
      },
      data(client, d) {
        const tapped = opts.tap ? opts.tap(d, bytes) : d;
        bytes += d.length;
        const out = client.data.split ? client.data.split(tapped) : tapped;
        if (out.length) forward(client, client.data.peer, out);
      },
      drain,
      close(client) {
        live.delete(client);
        client.data.peer?.end();
      },
    },
  });
  let listener = listen(0);
  const port = listener.port;
  let stopped = false;
  return {
    port,
    /** Bytes relayed from the source so far. */
    get bytes() {
      return bytes;
    },
    /** Connections the source opened so far. */
    get connections() {
      return clients.length;
    },
    /** Drops the source's `i`-th connection (from 0), both ways, as a lost flow would; the others go on. */
    cutConnection(i: number) {
      const c = clients[i]!;
      c.data.peer?.terminate();
      c.terminate();
    },
    /**
     * The source's `i`-th connection relays nothing more either way, and stays open: no bytes,
     * no close (reading stops, so TCP pushes back). The returned function lets it flow again.
     */
    stallConnection(i: number): () => void {
      const ends = [clients[i]!, clients[i]!.data.peer].filter((e): e is Socket<End> => !!e);
      for (const e of ends) {
        e.data.stalled = true;
        e.pause();
      }
      return () => {
        for (const e of ends) {
          e.data.stalled = false;
          for (const b of e.data.held?.splice(0) ?? []) forward(e, e.data.peer, b);
          e.resume();
        }
      };
    },
    /** Every connection stalls at once for `ms` (the link lost, nothing closed), then flows again. */
    loseLinkFor(ms: number) {
      const release = clients.map((_, i) => this.stallConnection(i));
      setTimeout(() => release.forEach((r) => r()), ms);
    },
    /** Drops every connection at once, as a broken link would. */
    cut() {
      for (const s of live) s.terminate();
      live.clear();
    },
    /** Cuts every connection and refuses new ones for `ms` (nothing listens: ECONNREFUSED, as with a destination that is down). */
    down(ms: number) {
      listener.stop(true);
      this.cut();
      setTimeout(() => {
        if (!stopped) listener = listen(port);
      }, ms);
    },
    stop() {
      stopped = true;
      this.cut();
      listener.stop(true);
    },
  };
}
