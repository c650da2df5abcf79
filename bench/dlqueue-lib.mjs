// The dlqueue library as a client process, so /usr/bin/time bills exactly its work.
// Plain JS run by plain node: a TypeScript loader would add its own start-up CPU and memory to
// dlqueue's numbers, and a type-checked import of ../dist would break `tsc --noEmit` before a build.
// Usage: node bench/dlqueue-lib.mjs <file-with-urls> <dest-dir> [option=value ...]
//   e.g. connectionsPerFile=8 fsync=false (values are JSON)
import { readdirSync, readFileSync } from "node:fs";
import { DownloadQueue } from "../dist/index.js";

const [urlFile, dir, ...pairs] = process.argv.slice(2);
const options = Object.fromEntries(
  pairs.map((pair) => {
    const [name, value] = pair.split("=");
    return [name, JSON.parse(value ?? "")];
  }),
);
// An unknown option is silently ignored, which would pass off a default run as a tuned one.
// An option that no file of dist/ names cannot be read, so refuse to run instead.
const dist = new URL("../dist/", import.meta.url);
const js = readdirSync(dist, { recursive: true })
  .filter((f) => f.endsWith(".js"))
  .map((f) => readFileSync(new URL(f, dist), "utf8"))
  .join("\n");
for (const name of Object.keys(options)) {
  if (!js.includes(name)) {
    console.error(`Error: this dlqueue build has no ${name} option`);
    process.exit(2);
  }
}
const urls = readFileSync(urlFile, "utf8").split("\n").filter(Boolean);
const q = new DownloadQueue({ maxParallelDownloads: 5, ...options });
// onError only makes a failure name its cause; the harness checks every file's sha256 regardless.
const onError = (job, error) => {
  console.error(`${job.source}: ${error.message}`);
  process.exitCode = 1;
};
for (const url of urls) q.download({ source: url, dest: dir, onError });
await q.join();
