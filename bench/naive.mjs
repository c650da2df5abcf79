// The "obvious" Node downloader, as a baseline: fetch piped to a file, 5 at a time.
// Plain JS for the same reason as dlqueue-lib.mjs: no loader cost in the measurement.
// Usage: node bench/naive.mjs <file-with-urls> <dest-dir>
import { createWriteStream, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

const [urlFile, dir] = process.argv.slice(2);
const urls = readFileSync(urlFile, "utf8").split("\n").filter(Boolean);
let next = 0;
async function worker() {
  while (next < urls.length) {
    const url = urls[next++];
    const res = await fetch(url);
    if (!res.ok || !res.body) throw new Error(`${url}: HTTP ${res.status}`);
    await pipeline(Readable.fromWeb(res.body), createWriteStream(join(dir, basename(new URL(url).pathname))));
  }
}
await Promise.all(Array.from({ length: 5 }, worker));
