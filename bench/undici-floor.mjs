// The least a Node client built on undici (dlqueue's HTTP client) does to save files the way dlqueue promises to:
// undici's dispatch API with no stream around the body, the body kept in memory, then written to a temporary name
// and renamed into place, so that no partial file ever sits at the final path. No queue, no retries, no resume, no
// name checks: what is left is the cost of the HTTP client and the four filesystem calls, the floor under any
// queue built on them. For small files only (each body is held whole). 5 at a time, like the other clients.
// Usage: node bench/undici-floor.mjs <file-with-urls> <dest-dir>
import { readFileSync } from "node:fs";
import { rename, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { Agent } from "undici";

const [urlFile, dir] = process.argv.slice(2);
const urls = readFileSync(urlFile, "utf8").split("\n").filter(Boolean);
const agent = new Agent({ connections: 5 });

function fetchBody(url) {
  const { origin, pathname, search } = new URL(url);
  return new Promise((resolve, reject) => {
    const chunks = [];
    agent.dispatch(
      { origin, path: pathname + search, method: "GET", headers: { "user-agent": "undici-floor" } },
      {
        onRequestStart() {},
        onResponseStart(controller, status) {
          if (status !== 200) controller.abort(new Error(`${url}: HTTP ${status}`));
        },
        onResponseData(_controller, chunk) {
          chunks.push(chunk);
        },
        onResponseEnd: () => resolve(Buffer.concat(chunks)),
        onResponseError: (_controller, error) => reject(error),
      },
    );
  });
}

let next = 0;
async function worker() {
  while (next < urls.length) {
    const url = urls[next++];
    const body = await fetchBody(url);
    const final = join(dir, basename(new URL(url).pathname));
    await writeFile(`${final}.part`, body);
    await rename(`${final}.part`, final);
  }
}
await Promise.all(Array.from({ length: 5 }, worker));
await agent.close();
