import { readFileSync } from "node:fs";

/** This package's version, read once: package.json sits one level up from both src/version.ts and dist/version.js. */
export const VERSION: string = (
  JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }
).version;
