// The `dlqueue` command as npm installs it: dist/cli/main.js (tsc's output) bundled by esbuild into dist/bin/.
// Node resolves, reads and compiles each of a `get`'s 56 modules and undici's 45 files one by one, and ESM's
// loader is slow at it: a CPU profile of a 1 KB `dlqueue get` found nearly half its time in loading them.
// Code splitting keeps each command's dynamic import() lazy: `--version` loads no engine, `get` no server.
//
// Left outside the bundle, loaded from node_modules as before: packages that find files of their own next to their
// code (better-sqlite3's native addon, BullMQ's Lua scripts, the Swagger UI's assets) and the server's and the
// model sources' libraries, which load only with their command or source and would gain little.
import { readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { build } from "esbuild";

const root = new URL("..", import.meta.url).pathname;
const { version } = JSON.parse(readFileSync(`${root}/package.json`, "utf8"));
const outdir = `${root}/dist/bin`;

await rm(outdir, { recursive: true, force: true });
await build({
  entryPoints: { dlqueue: `${root}/dist/cli/main.js` },
  // Module paths in the bundle's comments relative to the checkout, wherever the build runs from.
  absWorkingDir: root,
  outdir,
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  external: ["better-sqlite3", "bullmq", "ioredis", "fastify", "@fastify/*", "@huggingface/hub"],
  // Bundled CommonJS (commander, undici) calls require() for Node's own modules; ESM has none of its own.
  banner: {
    js: 'import { createRequire as __dlqRequire } from "node:module"; const require = __dlqRequire(import.meta.url);',
  },
  plugins: [
    {
      // dist/version.js reads ../package.json next to itself, which is not next to dist/bin/; the bundle carries it.
      name: "version",
      setup(b) {
        b.onLoad({ filter: /[\\/]dist[\\/]version\.js$/ }, () => ({
          contents: `export const VERSION = ${JSON.stringify(version)};`,
          loader: "js",
        }));
      },
    },
  ],
  logLevel: "warning",
});
