// The throttled, high-latency case served by the project's own test origin, in a process of its own
// so the server's CPU is never billed to the client under measurement.
// Prints one JSON line {url, sha256} per file, then serves until its stdin closes.
// Usage: node --import tsx bench/origin-child.ts <size-in-bytes> [<files>]
// One file is /throttled.bin; several (the shared queue's row, bench/workers.ts) are /throttled-<i>.bin.
import { startOrigin } from "../test/helpers/origin.js";

const size = Number(process.argv[2]);
const count = Number(process.argv[3] ?? 1);
const origin = await startOrigin();
for (let i = 0; i < count; i++) {
  const route = origin.route(count === 1 ? "/throttled.bin" : `/throttled-${i}.bin`, {
    size,
    throttleBytesPerSec: 50e6,
    latencyMs: 20,
  });
  console.log(JSON.stringify({ url: route.url, sha256: await route.sha256() }));
}
process.stdin.resume();
process.stdin.once("end", () => void origin.close().then(() => process.exit(0)));
