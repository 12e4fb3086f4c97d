import { defineCommand } from "citty";
import { logger, setLogLevel } from "../log.ts";
import { connectTcp } from "../net/channel.ts";
import { parseRate, TokenBucket } from "../net/rate.ts";
import { runSource } from "../phases/source-run.ts";
import { jsonArg, logArg, nameArg, runDirArg } from "./_shared.ts";
import { credentials, parseHostPort } from "./_migration.ts";
import { UsageError } from "../errors.ts";

export default defineCommand({
  meta: { name: "source", description: "Migrate a locally served disk to a waiting `wanmig dest`" },
  args: {
    ...nameArg,
    ...runDirArg,
    to: { type: "string", description: "the destination", required: true, valueHint: "HOST:PORT" },
    "secret-file": { type: "string", description: "shared secret (never sent)", valueHint: "F" },
    insecure: { type: "boolean", description: "talk to a destination without a secret", default: false },
    compress: { type: "enum", options: ["zstd", "none"], description: "compress blocks and deltas on the wire", default: "zstd" },
    bandwidth: { type: "string", description: "cap the migration stream: 5mbit, 100mbit, 10MB (per second)", valueHint: "RATE" },
    hypervisor: { type: "string", description: "who moves the memory: none (storage only)", default: "none" },
    ...jsonArg,
    ...logArg,
  },
  async run({ args }) {
    if (args.log) setLogLevel(args.log);
    if (args.hypervisor !== "none") throw new UsageError(`--hypervisor ${args.hypervisor} is not available yet; use none`);
    const log = logger("migration sender");
    const creds = credentials(args, "source");
    const { host, port } = parseHostPort(args.to, "--to");
    const rate = args.bandwidth ? new TokenBucket(parseRate(args.bandwidth)) : undefined;
    const m = await runSource({
      name: args.name,
      runDir: args["run-dir"],
      connect: async () => {
        const ch = await connectTcp(host, port);
        ch.rate = rate;
        return ch;
      },
      creds,
      compress: args.compress !== "none",
      log,
      onEvent: args.json ? (e) => process.stdout.write(`${JSON.stringify(e)}\n`) : undefined,
    });
    if (!args.json)
      process.stdout.write(
        `migrated ${args.name} in ${m.migrationTimeMs} ms: storage downtime ${m.storageDowntimeMs} ms, ` +
          `bulk ${m.bulkBytes} bytes (${m.bulkWireBytes} on the wire; ${m.bulkZeroBlocks} zero blocks skipped), ${m.deltaCount} deltas (${m.deltaBytes} bytes, ${m.finalDeltas} after the fence), ` +
          `${m.bytesOnWire} bytes on the wire, throttle level ${m.throttleSteps}\n`,
      );
  },
});
