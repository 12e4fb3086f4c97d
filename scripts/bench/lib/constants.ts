// Paths and units every bench uses.

import { realpathSync } from "node:fs";
import { basename, join } from "node:path";

export const REPO = join(import.meta.dir, "..", "..", "..");
export const MAIN = join(REPO, "src", "main.ts");
export const BUN = process.execPath;
export const BUN_EXE = basename(realpathSync(BUN));
export const MiB = 1024 * 1024;
