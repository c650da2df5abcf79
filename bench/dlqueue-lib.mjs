// The dlqueue library as a client process, so /usr/bin/time bills exactly its work.
// Plain JS run by plain node: a TypeScript loader would add its own start-up CPU and memory to
// dlqueue's numbers, and a type-checked import of ../dist would break `tsc --noEmit` before a build.
// Usage: node bench/dlqueue-lib.mjs <file-with-urls> <dest-dir> [connectionsPerFile]
import { readdirSync, readFileSync } from "node:fs";
import { DownloadQueue } from "../dist/index.js";

const [urlFile, dir, connections] = process.argv.slice(2);
// An unknown option is silently ignored, which would pass off a 1-connection run as an 8-connection one.
// An option that no file of dist/ names cannot be read, so refuse to run instead.
if (connections) {
  const dist = new URL("../dist/", import.meta.url);
  const js = readdirSync(dist, { recursive: true }).filter((f) => f.endsWith(".js"));
  if (!js.some((f) => readFileSync(new URL(f, dist), "utf8").includes("connectionsPerFile"))) {
    console.error("Error: this dlqueue build has no connectionsPerFile option");
    process.exit(2);
  }
}
const urls = readFileSync(urlFile, "utf8").split("\n").filter(Boolean);
const q = new DownloadQueue({
  maxParallelDownloads: 5,
  ...(connections ? { connectionsPerFile: Number(connections) } : {}),
});
// onError only makes a failure name its cause; the harness checks every file's sha256 regardless.
const onError = (job, error) => {
  console.error(`${job.source}: ${error.message}`);
  process.exitCode = 1;
};
for (const url of urls) q.download({ source: url, dest: dir, onError });
await q.join();
