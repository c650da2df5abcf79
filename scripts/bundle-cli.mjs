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
import { constants as http2Constants } from "node:http2";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const { version } = JSON.parse(readFileSync(`${root}/package.json`, "utf8"));
const outdir = `${root}/dist/bin`;

/**
 * Node modules that bundled packages require when they load but use only on paths dlqueue never takes; each cost
 * ~10 ms of every start. The requiring file gets a stand-in that loads the real module at its first use.
 */
const deferred = [
  // commander spawns child processes only for subcommands that are separate executables; dlqueue has none.
  {
    importer: `${root}/node_modules/commander/lib/command.js`,
    builtin: "node:child_process",
    contents: 'module.exports = new Proxy({}, { get: (_, name) => require("node:child_process")[name] });',
  },
  // undici's HTTP/2 client reads a few constants when it loads; dlqueue never speaks HTTP/2 (allowH2 stays off).
  // The stand-in carries their values, read here from this Node's node:http2.
  {
    importer: `${root}/node_modules/undici/lib/dispatcher/client-h2.js`,
    builtin: "node:http2",
    contents: (importer) => {
      const names = [...new Set(readFileSync(importer, "utf8").match(/\bN?G?HTTP2_[A-Z_]+\b/g))];
      const missing = names.filter((name) => !(name in http2Constants));
      if (missing.length) throw new Error(`node:http2 has no ${missing.join(", ")}: update scripts/bundle-cli.mjs`);
      const constants = Object.fromEntries(names.map((name) => [name, http2Constants[name]]));
      return `module.exports = {
        constants: ${JSON.stringify(constants)},
        connect: (...args) => require("node:http2").connect(...args),
      };`;
    },
  },
];

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
      name: "deferred-builtins",
      setup(b) {
        b.onResolve({ filter: /^node:/ }, (args) => {
          const index = deferred.findIndex((d) => d.importer === args.importer && d.builtin === args.path);
          return index < 0 ? undefined : { path: String(index), namespace: "deferred" };
        });
        b.onLoad({ filter: /.*/, namespace: "deferred" }, (args) => {
          const { importer, contents } = deferred[Number(args.path)];
          return { contents: typeof contents === "string" ? contents : contents(importer), loader: "js" };
        });
      },
    },
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
