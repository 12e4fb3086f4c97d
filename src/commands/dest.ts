import { defineCommand } from "citty";
import { DiskService } from "../disk/disk-service.ts";
import { logger, setLogLevel } from "../log.ts";
import type { Channel } from "../net/channel.ts";
import { listenTcp } from "../net/channel.ts";
import { receive } from "../phases/receive.ts";
import { jsonArg, logArg, nameArg, runDirArg } from "./_shared.ts";
import { credentials, parseHostPort } from "./_migration.ts";

export default defineCommand({
  meta: { name: "dest", description: "Receive a migrating VM's disk, then serve it here (holding its I/O until consistent)" },
  args: {
    ...nameArg,
    image: { type: "string", description: "the image file here (created sparse if missing)", required: true, valueHint: "PATH" },
    ...runDirArg,
    listen: { type: "string", description: "where the source connects", required: true, valueHint: "HOST:PORT" },
    "secret-file": { type: "string", description: "shared secret (both sides prove they know it; it is never sent)", valueHint: "F" },
    insecure: { type: "boolean", description: "accept a source without a secret", default: false },
    ...jsonArg,
    ...logArg,
  },
  async run({ args }) {
    if (args.log) setLogLevel(args.log);
    const log = logger("migration target");
    const creds = credentials(args, "dest");
    const { host, port } = parseHostPort(args.listen, "--listen");
    let svc: DiskService | undefined;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));

    const first = new Promise<Channel>((resolve) => {
      const listener = listenTcp(host, port, (ch) => {
        listener.stop(false); // one migration per dest process
        resolve(ch);
      });
      log.info(`listening on ${host}:${listener.port} for ${args.name}`);
    });
    const ch = await first;
    await receive(ch, {
      image: args.image,
      creds,
      log,
      onAuthenticated: async () => {
        svc = await DiskService.start({ image: args.image, name: args.name, runDir: args["run-dir"], hold: held, log: logger("serve") });
      },
    });
    release();
    if (args.json) process.stdout.write(`${JSON.stringify({ event: "done", name: args.name, image: args.image })}\n`);
    log.info(`migration complete: now serving ${args.name}`);
    await new Promise<void>((resolve) => {
      const stop = () => {
        svc?.stop();
        resolve();
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
    });
  },
});
