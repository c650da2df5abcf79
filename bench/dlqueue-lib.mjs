// The dlqueue library as a client process, so /usr/bin/time bills exactly its work.
// Plain JS run by plain node: a TypeScript loader would add its own start-up CPU and memory to
// dlqueue's numbers, and a type-checked import of ../dist would break `tsc --noEmit` before a build.
// Usage: node bench/dlqueue-lib.mjs <file-with-urls> <dest-dir> [option=value ...]
//   e.g. connectionsPerFile=8 fsync=false (values are JSON), or option=@<file> for a file's text (ca=@ca.pem)
import { readFileSync } from "node:fs";
import { DownloadQueue } from "../dist/index.js";

const [urlFile, dir, ...pairs] = process.argv.slice(2);
const options = Object.fromEntries(
  pairs.map((pair) => {
    const at = pair.indexOf("=");
    if (at < 1) throw new Error(`expected option=value, got ${pair}`);
    const [name, value] = [pair.slice(0, at), pair.slice(at + 1)];
    return [name, value.startsWith("@") ? readFileSync(value.slice(1), "utf8") : JSON.parse(value)];
  }),
);
// An unknown option is silently ignored, which would pass off a default run as a tuned one, or an https run
// trusting the bench's CA as one that does not. An option that this build's DownloadQueueOptions does not declare
// cannot be read, so refuse to run instead. (Declared, not merely named somewhere: "ca" is in every file.)
const types = readFileSync(new URL("../dist/options.d.ts", import.meta.url), "utf8");
const declared = types.split("export interface DownloadQueueOptions")[1]?.split("\n}")[0] ?? "";
for (const name of Object.keys(options)) {
  if (!new RegExp(`^\\s+${name}\\??:`, "m").test(declared)) {
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
