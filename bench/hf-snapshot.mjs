// @huggingface/hub's snapshotDownload as a client process, so /usr/bin/time bills exactly its work (bench/models.ts).
// Usage: node bench/hf-snapshot.mjs ORG/REPO <cache-dir> <hub-url>
import { snapshotDownload } from "@huggingface/hub";

const [name, cacheDir, hubUrl] = process.argv.slice(2);
const snapshot = await snapshotDownload({ repo: { type: "model", name }, cacheDir, hubUrl });
console.log(snapshot);
