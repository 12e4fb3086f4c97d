// The release version, from package.json: its own module, so commands can name it without
// importing the entry point (a cycle through main.ts's top-level await would hang).
import pkg from "../package.json" with { type: "json" };

export const VERSION: string = pkg.version;
