import { defineCommand } from "citty";
import { DiskService } from "../disk/disk-service.ts";
import { join } from "node:path";
import { logger, redirectLogsTo, setLogLevel } from "../log.ts";
import type { Channel } from "../net/channel.ts";
import { listenTcp, pipeChannel, stdoutSink } from "../net/channel.ts";
import { UsageError } from "../errors.ts";
import { receive } from "../phases/receive.ts";
import { jsonArg, logArg, nameArg, runDirArg } from "./_shared.ts";
import { credentials, parseHostPort } from "./_migration.ts";

async function firstConnection(listen: string, name: string, log: ReturnType<typeof logger>): Promise<Channel> {
  const { host, port } = parseHostPort(listen, "--listen");
  return new Promise<Channel>((resolve) => {
    const listener = listenTcp(host, port, (ch) => {
      listener.stop(false); // one migration per dest process
      resolve(ch);
    });
    log.info(`listening on ${host}:${listener.port} for ${name}`);
  });
}

export default defineCommand({
  meta: { name: "dest", description: "Receive a migrating VM's disk, then serve it here (holding its I/O until consistent)" },
  args: {
    ...nameArg,
    image: { type: "string", description: "the image file here (created sparse if missing)", required: true, valueHint: "PATH" },
    ...runDirArg,
    listen: { type: "string", description: "where the source connects", valueHint: "HOST:PORT" },
    stdio: { type: "boolean", description: "speak the protocol on stdin/stdout (run by `ssh HOST wanmig dest --stdio`; SSH authenticates)", default: false },
    "secret-file": { type: "string", description: "shared secret (both sides prove they know it; it is never sent)", valueHint: "F" },
    insecure: { type: "boolean", description: "accept a source without a secret", default: false },
    ...jsonArg,
    ...logArg,
  },
  async run({ args }) {
    if (args.log) setLogLevel(args.log);
    const log = logger("migration target");
    const serveLog = logger("serve");
    if (!args.stdio && !args.listen) throw new UsageError("dest needs --listen HOST:PORT or --stdio");
    // Over SSH the transport authenticated both ends already; no secret is needed.
    const creds = args.stdio ? { secret: args["secret-file"] ? credentials(args, "dest").secret : undefined } : credentials(args, "dest");
    let svc: DiskService | undefined;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const ch = args.stdio ? pipeChannel(Bun.stdin.stream(), stdoutSink()) : await firstConnection(args.listen!, args.name, log);
    await receive(ch, {
      image: args.image,
      creds,
      log,
      onAuthenticated: async () => {
        svc = await DiskService.start({ image: args.image, name: args.name, runDir: args["run-dir"], hold: held, log: serveLog });
      },
    });
    release();
    if (args.stdio) {
      // The source hangs up once it has DONE; the disk must go on being served.
      const logFile = join(args["run-dir"], `${args.name}.log`);
      log.info(`migration complete: now serving ${args.name}; logging to ${logFile}`);
      process.on("SIGHUP", () => undefined);
      process.on("SIGPIPE", () => undefined);
      process.stderr.on("error", () => undefined);
      process.stdout.on("error", () => undefined);
      await redirectLogsTo(logFile, [log, serveLog]);
      log.info(`migration complete: now serving ${args.name} (the ssh session that started us is gone)`);
    } else if (args.json) process.stdout.write(`${JSON.stringify({ event: "done", name: args.name, image: args.image })}\n`);
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
