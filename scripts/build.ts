// Builds dist/wanmig: one self-contained executable (Bun runtime included).
import { $ } from "bun";

await $`mkdir -p dist`;
await $`bun build --compile --minify-syntax --sourcemap=inline src/main.ts --outfile dist/wanmig`;
const version = await $`dist/wanmig --version`.text();
console.error(`built dist/wanmig (${version.trim()})`);
