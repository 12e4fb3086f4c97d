// Two libvirt hosts on one machine, as real as it allows: each a network namespace (a veth
// pair between them), a PID namespace whose init reaps what dies in it (this machine's own
// PID 1 reaps orphans late: libvirt waited 2 s for every QEMU it stopped, polling a zombie),
// a mount namespace of its own (/etc/libvirt, /run/libvirt,
// /var/lib/libvirt, /var/cache/libvirt, /run/wanmig and /etc/hosts bound from its own
// directory, so the same paths mean different files on each host, as on two machines), a
// UTS namespace with its own hostname, and a libvirtd of its own with its own host UUID,
// listening on TCP (auth none: a test network). QEMU runs as root without libvirt's
// namespaces, cgroups or security drivers, none of which work inside these namespaces.
// Needs root, libvirtd (libvirt-daemon, libvirt-daemon-driver-qemu) and virsh.
import type { Subprocess } from "bun";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { hostPair, type HostPair } from "./netns.ts";
import { sh, watchStderr } from "./serve-process.ts";

export interface LibvirtHost {
  name: string;
  /** The host's init (PID 1 in its namespace), as this machine sees it. */
  initPid: number;
  ip: string;
  /** This host's directory: what its /run/wanmig, /var/lib/libvirt … are, seen from outside. */
  dir: string;
  /** The directory bound on /run/wanmig there. */
  runDir: string;
  /** libvirt's URI for this host, from the other one. */
  uri: string;
  /** argv prefix: runs a command on this host (its namespaces). */
  exec: string[];
  /** Runs a command there and waits: stdout, or an error with its stderr. */
  run(argv: string[], opts?: { allowFail?: boolean }): Promise<{ code: number; stdout: string; stderr: string }>;
  /** A long-running process there, its stderr watched and its stdout collected. */
  spawn(argv: string[], what: string): { proc: Subprocess<"ignore", "pipe", "pipe">; log: ReturnType<typeof watchStderr>; out: () => string };
}

export interface LibvirtPair {
  a: LibvirtHost;
  b: LibvirtHost;
  remove(): Promise<void>;
}

export function libvirtInstalled(): boolean {
  return !!Bun.which("libvirtd") && !!Bun.which("virsh") && existsSync("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so");
}

/** `hook`: /etc/libvirt/hooks/qemu on both hosts (libvirtd reads its hooks when it starts). */
export async function libvirtPair(dir: string, opts: { hook?: string } = {}): Promise<LibvirtPair> {
  const net: HostPair = await hostPair();
  const holders: Subprocess[] = [];
  const spawned: Subprocess[] = [];
  const hosts: LibvirtHost[] = [];
  const remove = async () => {
    // A PID namespace's init killed takes everything in it along: libvirtd, QEMU, wanmig.
    for (const h of hosts) process.kill(h.initPid, "SIGKILL");
    for (const p of [...spawned, ...holders]) p.kill("SIGKILL");
    await net.remove();
  };
  try {
    const specs = [
      { name: "hosta", ip: net.a.ip, ns: net.a.ns, peer: { name: "hostb", ip: net.b.ip } },
      { name: "hostb", ip: net.b.ip, ns: net.b.ns, peer: { name: "hosta", ip: net.a.ip } },
    ];
    mkdirSync("/run/libvirt", { recursive: true });
    for (const s of specs) hosts.push(await startHost(dir, s, holders, spawned, opts.hook));
    return { a: hosts[0]!, b: hosts[1]!, remove };
  } catch (err) {
    await remove();
    throw err;
  }
}

async function startHost(
  top: string,
  s: { name: string; ip: string; ns: string; peer: { name: string; ip: string } },
  holders: Subprocess[],
  spawned: Subprocess[],
  hook?: string,
): Promise<LibvirtHost> {
  const dir = join(top, s.name);
  for (const d of ["etc", "run", "lib", "cache", "log", "wanmig"]) mkdirSync(join(dir, d), { recursive: true });
  if (hook) {
    mkdirSync(join(dir, "etc", "hooks"));
    writeFileSync(join(dir, "etc", "hooks", "qemu"), hook, { mode: 0o755 });
  }
  writeFileSync(
    join(dir, "etc", "libvirtd.conf"),
    [
      "listen_tls = 0",
      "listen_tcp = 1",
      `listen_addr = "${s.ip}"`,
      'auth_tcp = "none"',
      'auth_unix_rw = "none"',
      `host_uuid = "${crypto.randomUUID()}"`,
      `log_outputs = "${process.env.WANMIG_DEBUG_LIBVIRT ? 1 : 3}:file:${join(dir, "log", "libvirtd.log")}"`,
      ...(process.env.WANMIG_DEBUG_LIBVIRT ? ['log_filters = "1:qemu.qemu_migration 1:qemu.qemu_monitor 1:qemu.qemu_process 1:util.process 3:util 3:rpc 3:conf 3:object 3:event 3:security"'] : []),
    ].join("\n") + "\n",
  );
  // stdio_handler file: no virtlogd; migration_address: QEMU listens for the memory on this host's address.
  writeFileSync(
    join(dir, "etc", "qemu.conf"),
    ['user = "root"', 'group = "root"', "dynamic_ownership = 0", "remember_owner = 0", 'security_driver = "none"', "namespaces = []", "cgroup_controllers = []", 'stdio_handler = "file"', `migration_address = "${s.ip}"`].join("\n") + "\n",
  );
  writeFileSync(join(dir, "hosts"), `127.0.0.1 localhost\n${s.ip} ${s.name}\n${s.peer.ip} ${s.peer.name}\n`);
  const ready = join(dir, "ready");
  const binds: [string, string][] = [
    [join(dir, "etc"), "/etc/libvirt"],
    [join(dir, "run"), "/run/libvirt"],
    [join(dir, "lib"), "/var/lib/libvirt"],
    [join(dir, "cache"), "/var/cache/libvirt"],
    [join(dir, "wanmig"), "/run/wanmig"],
    [join(dir, "hosts"), "/etc/hosts"],
  ];
  const script = [
    "set -e",
    ...binds.flatMap(([from, to]) => [`[ -e ${to} ] || mkdir -p ${to}`, `mount --bind ${from} ${to}`]),
    `hostname ${s.name}`,
    `touch ${ready}`,
    // bash as PID 1 reaps every orphan in its SIGCHLD handler, at once.
    "while :; do sleep 3600 & wait $!; done",
  ].join("\n");
  const holder = Bun.spawn(["ip", "netns", "exec", s.ns, "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "--propagation", "private", "bash", "-c", script], {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
  });
  holders.push(holder);
  for (let i = 0; !existsSync(ready); i++) {
    if (holder.exitCode !== null) throw new Error(`host ${s.name} did not come up: ${await new Response(holder.stderr).text()}`);
    if (i > 200) throw new Error(`host ${s.name}: no namespaces after 10 s`);
    await Bun.sleep(50);
  }
  // unshare --fork: the namespace's init is its child.
  const initPid = Number(readFileSync(`/proc/${holder.pid}/task/${holder.pid}/children`, "utf8").trim().split(/\s+/)[0]);
  if (!initPid) throw new Error(`host ${s.name}: no init in its PID namespace`);
  const exec = ["nsenter", "-t", String(initPid), "--mount", "--uts", "--net", "--pid", "--"];
  const host: LibvirtHost = {
    name: s.name,
    initPid,
    ip: s.ip,
    dir,
    runDir: join(dir, "wanmig"),
    uri: `qemu+tcp://${s.name}/system`,
    exec,
    async run(argv, opts = {}) {
      const r = await sh([...exec, ...argv], { allowFail: true });
      if (r.code !== 0 && !opts.allowFail) throw new Error(`${s.name}: ${argv.join(" ")} exited ${r.code}: ${r.stderr}`);
      return r;
    },
    spawn(argv, what) {
      const proc = Bun.spawn([...exec, ...argv], { stdin: "ignore", stdout: "pipe", stderr: "pipe" }) as Subprocess<"ignore", "pipe", "pipe">;
      spawned.push(proc);
      let out = "";
      (async () => {
        for await (const c of proc.stdout) out += new TextDecoder().decode(c);
      })();
      return { proc, log: watchStderr(proc, what), out: () => out };
    },
  };
  // The pid file would be /run/libvirtd.pid, one for both hosts: it goes in this host's /run/libvirt.
  await host.run(["libvirtd", "--daemon", "--config", "/etc/libvirt/libvirtd.conf", "--listen", "--pid-file", "/run/libvirt/libvirtd.pid"]);
  for (let i = 0; ; i++) {
    if ((await host.run(["virsh", "-c", "qemu:///system", "version"], { allowFail: true })).code === 0) break;
    if (i > 100) throw new Error(`libvirtd on ${s.name} does not answer: ${readLog(dir)}`);
    await Bun.sleep(100);
  }
  return host;
}

function readLog(dir: string): string {
  try {
    return readFileSync(join(dir, "log", "libvirtd.log"), "utf8").split("\n").slice(-10).join("\n");
  } catch {
    return "(no log)";
  }
}
