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

if (mode === "server") {
  Bun.listen({ hostname: host!, port, socket: { data: (s, d) => void s.write(d) } });
  console.log("listening");
} else if (mode === "listen") {
  let ticks = 0;
  let lastTick = Date.now();
  let longestGapMs = 0;
  let broke: string | undefined;
  let closing = false;
  const sock = await Bun.connect({
    hostname: host!,
    port,
    socket: {
      data(_s, d) {
        const n = new TextDecoder().decode(d).split("\n").length - 1;
        if (!n) return;
        const now = Date.now();
        longestGapMs = Math.max(longestGapMs, now - lastTick);
        lastTick = now;
        ticks += n;
      },
      close() {
        if (!closing) broke ??= "closed by the peer";
      },
      error(_s, err) {
        broke ??= err.message;
      },
    },
  });
  console.log("connected");
  process.on("SIGTERM", () => {
    closing = true;
    longestGapMs = Math.max(longestGapMs, Date.now() - lastTick);
    console.log(JSON.stringify({ summary: true, ticks, longestGapMs, broke: broke ?? null }));
    sock.end();
    setTimeout(() => process.exit(0), 200);
  });
  setInterval(() => console.log(JSON.stringify({ ticks })), 1000);
} else {
  let echoes = 0;
  let lastEcho = Date.now();
  let longestGapMs = 0;
  let broke: string | undefined;
  let buf = "";
  let closing = false;
  const sock = await Bun.connect({
    hostname: host!,
    port,
    socket: {
      data(_s, d) {
        buf += new TextDecoder().decode(d);
        for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
          buf = buf.slice(nl + 1);
          const now = Date.now();
          longestGapMs = Math.max(longestGapMs, now - lastEcho);
          lastEcho = now;
          echoes++;
        }
      },
      close() {
        if (!closing) broke ??= "closed by the peer";
      },
      error(_s, err) {
        broke ??= err.message;
      },
    },
  });
  console.log("connected");
  let n = 0;
  let quiet = false; // SIGUSR1: stop probing (the connection stays open); SIGUSR2: probe again
  process.on("SIGUSR1", () => (quiet = true));
  process.on("SIGUSR2", () => {
    quiet = false;
    lastEcho = Date.now();
  });
  const timer = setInterval(() => {
    if (!quiet) sock.write(`probe ${n++}\n`);
  }, 50);
  process.on("SIGTERM", () => {
    clearInterval(timer);
    closing = true;
    longestGapMs = Math.max(longestGapMs, Date.now() - lastEcho);
    console.log(JSON.stringify({ sent: n, echoes, longestGapMs, broke: broke ?? null }));
    sock.end();
    setTimeout(() => process.exit(0), 200);
  });
  // Progress for the test: one line per second.
  setInterval(() => console.log(JSON.stringify({ echoes })), 1000);
}

export {};
