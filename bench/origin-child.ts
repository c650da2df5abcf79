// The throttled, high-latency case served by the project's own test origin, in a process of its own
// so the server's CPU is never billed to the client under measurement.
// Prints one JSON line {url, sha256}, then serves until its stdin closes.
// Usage: node --import tsx bench/origin-child.ts <size-in-bytes>
import { startOrigin } from "../test/helpers/origin.js";

const origin = await startOrigin();
const route = origin.route("/throttled.bin", {
  size: Number(process.argv[2]),
  throttleBytesPerSec: 50e6,
  latencyMs: 20,
});
console.log(JSON.stringify({ url: route.url, sha256: await route.sha256() }));
process.stdin.resume();
process.stdin.once("end", () => void origin.close().then(() => process.exit(0)));
