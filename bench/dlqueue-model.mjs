// dlqueue's library as a model-download client process, so /usr/bin/time bills exactly its work (bench/models.ts).
// Plain JS on dist/ for the reasons given in dlqueue-lib.mjs. Default queue options, as a user would start.
// Usage: HF_ENDPOINT=… node bench/dlqueue-model.mjs hf://ORG/REPO <cache-dir>
import { DownloadQueue } from "../dist/index.js";

const [source, cache] = process.argv.slice(2);
const q = new DownloadQueue();
const job = await q.modelDownload({ source, cache });
await q.waitForJob(job);
if (job.status !== "completed") {
  console.error(`${source}: ${job.status}: ${job.error}`);
  process.exitCode = 1;
}
await q.stop();
