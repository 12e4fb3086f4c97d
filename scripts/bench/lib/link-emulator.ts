// A long fat pipe between two network namespaces that keeps TCP end to end. This machine
// has no netem, and a TCP proxy that delays streams ends TCP at each side, hiding what one
// stream meets on a long path (its window over the round trip, slow start, loss recovery).
// So this delays IP packets instead: a TUN device in each namespace, and every packet read
// from one is written to the other after half the round trip, behind a rate cap with a
// tail-drop bottleneck queue, and dropped at random if asked. Everything between the two
// namespaces that is routed over it (the migration, a VXLAN tunnel, iperf3) is delayed alike.
//
// Run as its own process (it blocks two threads in reads):
//   bun scripts/bench/lib/link-emulator.ts NS_A NS_B --rtt-ms 100 --rate-mbit 1000
//     [--loss 0.001] [--queue-ms 200] [--mtu 65000] [--addr-a 10.78.0.1] [--addr-b 10.78.0.2]
// It prints "ready" once both ends are up, and on SIGTERM its counts (JSON) on stdout, then
// removes the devices.
//
// A 65,000-byte MTU keeps the packet rate near 2,000 a second each way at 1 Gbit/s; TCP's
// window dynamics do not depend on the MTU.

import { dlopen, FFIType, ptr } from "bun:ffi";
import { closeSync, openSync, read, writeSync } from "node:fs";
import { parseArgs } from "node:util";

const TUNSETIFF = 0x400454ca;
const IFF_TUN = 0x0001;
const IFF_NO_PI = 0x1000;
const MAX_PACKET = 70_000;

export interface LinkSpec {
  rttMs: number;
  rateMbit: number;
  /** Probability that a packet is dropped on the way, each way (0.001: 0.1 %). */
  loss?: number;
  /** The bottleneck's queue, in ms at the rate: a packet that would wait longer is dropped. */
  queueMs?: number;
  mtu?: number;
}

/** One direction of the link: a FIFO of packets, each due at its time, behind the rate cap. */
class Direction {
  private freeAt = 0;
  private readonly due: { at: number; packet: Uint8Array }[] = [];
  private timer?: Timer;
  forwarded = 0;
  lost = 0;
  dropped = 0;
  bytes = 0;

  constructor(
    private readonly out: number,
    private readonly spec: Required<LinkSpec>,
  ) {}

  private get bytesPerMs(): number {
    return (this.spec.rateMbit * 1e6) / 8 / 1000;
  }

  /** A packet read from the other end at `now`: queued behind the rate, due half a round trip after it leaves the bottleneck. */
  take(packet: Uint8Array, now: number): void {
    if (this.spec.loss && Math.random() < this.spec.loss) {
      this.lost++;
      return;
    }
    const start = Math.max(now, this.freeAt);
    if (start - now > this.spec.queueMs) {
      this.dropped++; // the bottleneck's queue is full: tail drop
      return;
    }
    this.freeAt = start + packet.length / this.bytesPerMs;
    // FIFO: each packet is due no earlier than the one before, so a queue serves as a heap.
    this.due.push({ at: this.freeAt + this.spec.rttMs / 2, packet });
    if (!this.timer) this.arm();
  }

  private arm(): void {
    const head = this.due[0];
    if (!head) return;
    this.timer = setTimeout(() => this.deliver(), Math.max(0, head.at - performance.now()));
  }

  private deliver(): void {
    this.timer = undefined;
    const now = performance.now();
    while (this.due.length && this.due[0]!.at <= now) {
      const { packet } = this.due.shift()!;
      try {
        writeSync(this.out, packet);
        this.forwarded++;
        this.bytes += packet.length;
      } catch {
        this.dropped++;
      }
    }
    this.arm();
  }

  stop(): void {
    clearTimeout(this.timer);
  }
}

const libc = dlopen("libc.so.6", { ioctl: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 } });

function openTun(name: string): number {
  const fd = openSync("/dev/net/tun", "r+");
  // struct ifreq: the name (16 bytes), then the flags (a short), padded to 40 bytes.
  const ifr = new Uint8Array(40);
  ifr.set(new TextEncoder().encode(name));
  new DataView(ifr.buffer).setUint16(16, IFF_TUN | IFF_NO_PI, true);
  if (libc.symbols.ioctl(fd, TUNSETIFF, ptr(ifr)) !== 0) throw new Error(`TUNSETIFF ${name} failed`);
  return fd;
}

/** Reads packets from `fd` until it closes; each goes to `dir`. A blocking read on a worker thread of the fs pool. */
function pump(fd: number, dir: Direction, running: () => boolean): void {
  const buf = Buffer.allocUnsafe(MAX_PACKET);
  const next = () =>
    read(fd, buf, 0, MAX_PACKET, null, (err, n) => {
      if (err || !running()) return;
      dir.take(Uint8Array.prototype.slice.call(buf, 0, n), performance.now());
      next();
    });
  next();
}

async function sh(...argv: string[]): Promise<void> {
  const p = Bun.spawn(argv, { stdout: "ignore", stderr: "pipe" });
  if ((await p.exited) !== 0) throw new Error(`${argv.join(" ")}: ${(await new Response(p.stderr).text()).trim()}`);
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    args: process.argv.slice(2),
    allowPositionals: true,
    options: {
      "rtt-ms": { type: "string", default: "100" },
      "rate-mbit": { type: "string", default: "1000" },
      loss: { type: "string", default: "0" },
      "queue-ms": { type: "string", default: "200" },
      mtu: { type: "string", default: "65000" },
      "addr-a": { type: "string", default: "10.78.0.1" },
      "addr-b": { type: "string", default: "10.78.0.2" },
      dev: { type: "string", default: "lfn0" },
    },
  });
  const [nsA, nsB] = positionals;
  if (!nsA || !nsB) throw new Error("usage: link-emulator.ts NS_A NS_B [--rtt-ms R] [--rate-mbit M] [--loss P] [--queue-ms Q] [--mtu N]");
  const spec: Required<LinkSpec> = { rttMs: Number(values["rtt-ms"]), rateMbit: Number(values["rate-mbit"]), loss: Number(values.loss), queueMs: Number(values["queue-ms"]), mtu: Number(values.mtu) };
  const tag = process.pid % 100000;
  const names = { a: `lfa${tag}`, b: `lfb${tag}` };
  await sh("ip", "tuntap", "add", "dev", names.a, "mode", "tun");
  await sh("ip", "tuntap", "add", "dev", names.b, "mode", "tun");
  const fdA = openTun(names.a);
  const fdB = openTun(names.b);
  // The descriptors stay attached when the devices move into the namespaces.
  for (const [name, ns, addr] of [[names.a, nsA, values["addr-a"]!], [names.b, nsB, values["addr-b"]!]] as const) {
    await sh("ip", "link", "set", name, "netns", ns);
    await sh("ip", "-n", ns, "link", "set", name, "name", values.dev!);
    await sh("ip", "-n", ns, "link", "set", values.dev!, "mtu", String(spec.mtu), "up");
    await sh("ip", "-n", ns, "addr", "add", `${addr}/24`, "dev", values.dev!);
  }
  const aToB = new Direction(fdB, spec);
  const bToA = new Direction(fdA, spec);
  let running = true;
  pump(fdA, aToB, () => running);
  pump(fdB, bToA, () => running);
  const stop = async () => {
    running = false;
    aToB.stop();
    bToA.stop();
    const counts = (d: Direction) => ({ forwarded: d.forwarded, bytes: d.bytes, lost: d.lost, dropped: d.dropped });
    process.stdout.write(`${JSON.stringify({ aToB: counts(aToB), bToA: counts(bToA) })}\n`);
    for (const ns of [nsA, nsB]) await sh("ip", "-n", ns, "link", "del", values.dev!).catch(() => undefined);
    for (const fd of [fdA, fdB]) closeSync(fd);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  process.stdout.write("ready\n");
}

if (import.meta.main) await main();
