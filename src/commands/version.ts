import { defineCommand } from "citty";
import { VERSION } from "../version.ts";
import { PROTOCOL_VERSION } from "../net/protocol.ts";
import { jsonArg } from "./_shared.ts";

/** What `wanmig migrate` asks a remote host: the two must speak the same protocol. */
export default defineCommand({
  meta: { name: "version", description: "Print the version and the migration protocol version" },
  args: { ...jsonArg },
  run({ args }) {
    process.stdout.write(args.json ? `${JSON.stringify({ version: VERSION, protocol: PROTOCOL_VERSION })}\n` : `wanmig ${VERSION} (protocol ${PROTOCOL_VERSION})\n`);
  },
});
