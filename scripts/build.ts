// Builds dist/wanmig: one self-contained executable (Bun runtime included).
// --baseline: dist/wanmig-baseline instead, on Bun's baseline runtime, for x86-64 CPUs
// without AVX2 (older hosts, and QEMU's qemu64 CPU model: the nested-Xen test's dom0).
import { $ } from "bun";

const baseline = process.argv.includes("--baseline");
const out = baseline ? "dist/wanmig-baseline" : "dist/wanmig";
const target = baseline ? ["--target=bun-linux-x64-baseline"] : [];
await $`mkdir -p dist`;
await $`bun build --compile ${target} --minify-syntax --sourcemap=inline src/main.ts --outfile ${out}`;
const version = await $`${out} --version`.text();
console.error(`built ${out} (${version.trim()})`);
