// Connections from the source, one after another (a broken one may be followed by a resume),
// each handed over once its handshake authenticated it. Handshakes run as connections
// arrive, side by side: a stranger that connects and says nothing, or says HELLO and never
// proves itself, must not hold the real source up behind it until a timeout.

import type { Logger } from "../../log.ts";
import { type Channel, listenTcp } from "../../net/channel.ts";
import type { Hello } from "../../net/protocol.ts";
import { serverTls, type TlsFiles } from "../../net/tls.ts";
import type { Receiver } from "../receive.ts";

export interface Authenticated {
  ch: Channel;
  hello: Hello;
}

export type Connections = ReturnType<typeof listenForSources>;

export function listenForSources(listen: { host: string; port: number; tls?: TlsFiles }, name: string, log: Logger, receiver: Receiver) {
  const { host, port, tls } = listen;
  const waiting: Authenticated[] = [];
  let wake: (() => void) | undefined;
  const refused = (why: string) => log.warn(`refused a source at the TLS handshake (${why}); waiting for one whose certificate chains to --tls-ca`);
  const listener = listenTcp(
    host,
    port,
    (ch) =>
      void receiver.authenticate(ch).then((hello) => {
        if (!hello) return;
        // A further connection of the source being received joins it at once (lanes.ts).
        if (hello.join) return void receiver.join(ch, hello);
        waiting.push({ ch, hello });
        wake?.();
      }),
    tls && { options: serverTls(tls), onRefused: refused },
    { busyHint: `stop that process (\`ss -ltnp 'sport = :${port}'\` names it), or pick another --listen port; a TCP dest keeps its port for 60 s after a move, for a source that lost its answer` },
  );
  log.info(`listening on ${host}:${listener.port} for ${name}`);
  return {
    async next(timeoutMs: number): Promise<Authenticated | undefined> {
      const end = Date.now() + timeoutMs;
      while (!waiting.length && Date.now() < end) await new Promise<void>((r) => ((wake = r), setTimeout(r, Math.min(end - Date.now(), 60_000))));
      return waiting.shift();
    },
    close: () => listener.stop(false),
  };
}

/**
 * After completion: answer a source that lost DONE (it asks with the same recording) until
 * `ms` pass, or (`once`) until one has been answered.
 */
export async function answerLateQueries(conns: Connections, receiver: Receiver, ms: number, once = false): Promise<void> {
  const end = Date.now() + ms;
  try {
    for (;;) {
      const left = end - Date.now();
      if (left <= 0) return;
      const next = await conns.next(left);
      if (next && (await receiver.serve(next.ch, next.hello).catch(() => "rejected")) === "answered" && once) return;
    }
  } finally {
    conns.close();
  }
}
