// `wanmig dest`: its flags, parsed and checked before anything is created or listens; the
// run itself is src/phases/dest/run.ts.

import { defineCommand } from "citty";
import { statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { destHypervisor } from "../hypervisor/index.ts";
import { logger, setLogLevel } from "../log.ts";
import { tlsArgs, tlsFromArgs } from "../net/tls.ts";
import { runDest } from "../phases/dest/run.ts";
import { ServeError, UsageError } from "../errors.ts";
import { fileProblem } from "../util/os-errors.ts";
import { jsonArg, logArg, nameArg, REPEATABLE, runDirArg, valuesOf } from "./_shared.ts";
import { credentials, parseHostPort, writableDir } from "./_migration.ts";

/**
 * What can be checked before anything is created or listens: a value found wrong only when
 * the source connects (or after a broken link) is found too late. Each image is a file, or
 * is created in a directory that exists; its state file goes beside it either way.
 */
function checkStartup(args: { stdio: boolean; listen?: string; "resume-timeout": string }, images: string[]): void {
  if (!args.stdio) parseHostPort(args.listen!, "--listen");
  if (!/^\d+(\.\d+)?$/.test(args["resume-timeout"].trim()))
    throw new UsageError(`--resume-timeout ${JSON.stringify(args["resume-timeout"])} is not a number of seconds`, "write it like 600");
  for (const image of images) {
    try {
      if (statSync(image).isDirectory()) throw new ServeError(`--image ${image} is a directory`, { hint: "name the image file (it is created if missing)" });
    } catch (cause) {
      if (cause instanceof ServeError) throw cause;
      if ((cause as NodeJS.ErrnoException).code !== "ENOENT") throw new ServeError(`cannot use --image ${image}: ${fileProblem(cause)}`);
    }
    writableDir(dirname(resolve(image)), `--image ${image}`);
  }
}

export default defineCommand({
  meta: { name: "dest", description: "Receive a migrating VM's disk, then serve it here (holding its I/O until consistent)" },
  args: {
    ...nameArg,
    image: { type: "string", description: "an image file here (created sparse if missing); once per disk, in the source's order", required: true, valueHint: "PATH", ...REPEATABLE },
    ...runDirArg,
    base: { type: "string", description: "start --image as a copy of this file (a template, an older copy of the disk): only blocks that differ travel; once per --image", valueHint: "PATH", ...REPEATABLE },
    listen: { type: "string", description: "where the source connects", valueHint: "HOST:PORT" },
    "resume-timeout": { type: "string", description: "after a broken link, how long to wait for the source to resume (seconds)", default: "600", valueHint: "S" },
    hypervisor: { type: "enum", options: ["none", "xl", "qemu", "libvirt"], description: "who runs the VM here once its disk is verified: none, xl (unpause DOMAIN), qemu (wait until it runs), libvirt (virsh resume DOMAIN)", default: "none" },
    domain: { type: "string", description: "with xl or libvirt: the domain to run here", valueHint: "DOMAIN" },
    "libvirt-uri": { type: "string", description: "with libvirt: this host's libvirt (virsh -c; default: virsh's own)", valueHint: "URI" },
    qmp: { type: "string", description: "with qemu: the destination QEMU's QMP socket", valueHint: "unix:PATH" },
    "pid-file": { type: "string", description: "write our pid here (removed on exit): the daemon `wanmig migrate` leaves behind", valueHint: "FILE" },
    "remove-on-abort": { type: "boolean", description: "if the migration aborts, remove the image this run created (what `wanmig migrate` asks)", default: false },
    "vm-dev": { type: "string", description: "with a network redirect: the interface behind which the VM sits on this host (default: the route to its new address)", valueHint: "DEV" },
    stdio: { type: "boolean", description: "speak the protocol on stdin/stdout (run by `ssh HOST wanmig dest --stdio`; SSH authenticates)", default: false },
    "secret-file": { type: "string", description: "shared secret (both sides prove they know it; it is never sent)", valueHint: "F" },
    ...tlsArgs,
    insecure: { type: "boolean", description: "no secret: frames in the clear (the only way to a plaintext stream), and any source that reaches the port is accepted", default: false },
    ...jsonArg,
    ...logArg,
  },
  async run({ args, rawArgs }) {
    if (args.log) setLogLevel(args.log);
    const log = logger("migration target");
    const images = valuesOf(rawArgs, "image");
    if (new Set(images).size !== images.length) throw new UsageError("an --image is given twice", "--image once per disk, each a different file");
    if (!args.stdio && !args.listen) throw new UsageError("dest needs --listen HOST:PORT or --stdio");
    // Over SSH the transport authenticated both ends already; no secret is needed.
    if (args.stdio && args.tls) throw new UsageError("--tls is for --listen over TCP; with --stdio, ssh encrypts and authenticates already");
    const tls = tlsFromArgs(args); // its files checked now, before anything starts
    checkStartup(args, images);
    const creds = args.stdio ? { secret: args["secret-file"] ? credentials(args, "dest").secret : undefined } : credentials(args, "dest");
    await runDest({
      name: args.name,
      images,
      bases: valuesOf(rawArgs, "base"),
      runDir: args["run-dir"],
      listen: args.stdio ? undefined : { ...parseHostPort(args.listen!, "--listen"), tls },
      resumeTimeout: { ms: Number(args["resume-timeout"]) * 1000, text: args["resume-timeout"] },
      creds,
      hv: destHypervisor(args, log),
      pidFile: args["pid-file"],
      removeOnAbort: args["remove-on-abort"],
      vmDev: args["vm-dev"],
      json: args.json,
      log,
      serveLog: logger("serve"),
    });
  },
});
