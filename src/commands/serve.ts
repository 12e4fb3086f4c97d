import { defineCommand } from "citty";
import { DiskService } from "../disk/service/disk-service.ts";
import { parseEndpoint } from "../disk/nbd/nbd-server.ts";
import { logger, setLogLevel } from "../log.ts";
import { parseMaxRequest } from "../disk/nbd/max-request.ts";
import { logArg, nameArg, REPEATABLE, runDirArg, valuesOf } from "./_shared.ts";

export default defineCommand({
  meta: { name: "serve", description: "Serve a VM's disk images over NBD (exports disk0, disk1, ...), with record mode, throttling and fencing" },
  args: {
    image: { type: "string", description: "a disk image file (raw); once per disk of the VM, in order: export disk0, disk1, ... (\"\" and NAME mean disk0)", required: true, valueHint: "PATH", ...REPEATABLE },
    ...nameArg,
    ...runDirArg,
    nbd: { type: "string", description: "where to listen for NBD (default unix:DIR/NAME.nbd)", valueHint: "unix:PATH|tcp:HOST:PORT" },
    "read-only": { type: "boolean", description: "refuse every write", default: false },
    unfence: {
      type: "boolean",
      description: "lift a fence an earlier migration left on this image (only when the VM runs nowhere else: the disk could fork)",
      default: false,
    },
    "max-request": {
      type: "string",
      description: "the largest NBD request advertised to clients (64KiB to 32MiB, a multiple of 4KiB): bounds what a VM holds in flight, which its pause drains inside a migration's downtime",
      valueHint: "SIZE",
    },
    ...logArg,
  },
  async run({ args, rawArgs }) {
    if (args.log) setLogLevel(args.log);
    const log = logger("serve");
    // Signals are caught from the start: a SIGTERM in the instant after "serving" (systemd, a
    // test) killed the process uncleanly (exit 143), its sockets left behind.
    let signalled: string | undefined;
    let onSignal: ((sig: string) => void) | undefined;
    const caught = (sig: string) => {
      signalled ??= sig;
      onSignal?.(sig);
    };
    process.once("SIGINT", () => caught("SIGINT"));
    process.once("SIGTERM", () => caught("SIGTERM"));
    const svc = await DiskService.start({
      images: valuesOf(rawArgs, "image"),
      name: args.name,
      runDir: args["run-dir"],
      nbd: args.nbd ? parseEndpoint(args.nbd) : undefined,
      readOnly: args["read-only"],
      unfence: args.unfence,
      maxRequest: args["max-request"] ? parseMaxRequest(args["max-request"]) : undefined,
      // Its disk moved away and the VM comes back onto it (wanmig dest): the clean stop below.
      onRetire: () => process.kill(process.pid, "SIGTERM"),
      log,
    });
    // Runs until a signal: stop listening, close the image, remove our sockets.
    const sig = signalled ?? (await new Promise<string>((resolve) => (onSignal = resolve)));
    log.info(`${sig}: shutting down`);
    svc.stop();
  },
});
