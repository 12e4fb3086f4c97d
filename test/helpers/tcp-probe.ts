// A TCP echo server and a client that probes it every 50 ms over ONE connection: how the
// VM's open connections fare while it moves. Run as a script inside a namespace:
//   bun tcp-probe.ts server HOST PORT
//   bun tcp-probe.ts client HOST PORT      (prints a JSON summary on SIGTERM, then exits;
//                                           SIGUSR1 makes it quiet, SIGUSR2 probe again)
//   bun tcp-probe.ts listen HOST PORT      (sends nothing, counts the lines the server sends:
//                                           {"ticks":N} each second, the summary on SIGTERM)
// The client's summary: echoes received, the longest gap between two echoes, and whether
// the connection ever broke (an error or a close it did not ask for).
const [mode, host, portText] = process.argv.slice(2);
const port = Number(portText);

/**
 * One connection to the server, counting the lines that come back and the longest gap
 * between two; `broke` says whether it ever broke (an error, or a close not asked for).
 */
async function lineCounter(name: string) {
  const c = { lines: 0, last: Date.now(), longestGapMs: 0, broke: undefined as string | undefined, closing: false };
  let buf = "";
  const sock = await Bun.connect({
    hostname: host!,
    port,
    socket: {
      data(_s, d) {
        buf += new TextDecoder().decode(d);
        for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
          buf = buf.slice(nl + 1);
          const now = Date.now();
          c.longestGapMs = Math.max(c.longestGapMs, now - c.last);
          c.last = now;
          c.lines++;
        }
      },
      close() {
        if (!c.closing) c.broke ??= "closed by the peer";
      },
      error(_s, err) {
        c.broke ??= err.message;
      },
    },
  });
  console.log("connected");
  // Progress for the test: one line per second.
  setInterval(() => console.log(JSON.stringify({ [name]: c.lines })), 1000);
  /** At SIGTERM: the summary, then exit. */
  const onStop = (summary: () => Record<string, unknown>) =>
    process.on("SIGTERM", () => {
      c.closing = true;
      c.longestGapMs = Math.max(c.longestGapMs, Date.now() - c.last);
      console.log(JSON.stringify({ ...summary(), longestGapMs: c.longestGapMs, broke: c.broke ?? null }));
      sock.end();
      setTimeout(() => process.exit(0), 200);
    });
  return { c, sock, onStop };
}

if (mode === "server") {
  Bun.listen({ hostname: host!, port, socket: { data: (s, d) => void s.write(d) } });
  console.log("listening");
} else if (mode === "listen") {
  const { c, onStop } = await lineCounter("ticks");
  onStop(() => ({ summary: true, ticks: c.lines }));
} else {
  const { c, sock, onStop } = await lineCounter("echoes");
  let n = 0;
  let quiet = false; // SIGUSR1: stop probing (the connection stays open); SIGUSR2: probe again
  process.on("SIGUSR1", () => (quiet = true));
  process.on("SIGUSR2", () => {
    quiet = false;
    c.last = Date.now();
  });
  const timer = setInterval(() => {
    if (!quiet) sock.write(`probe ${n++}\n`);
  }, 50);
  onStop(() => {
    clearInterval(timer);
    return { sent: n, echoes: c.lines };
  });
}

export {};
