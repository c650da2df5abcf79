// The throttled, high-latency case served by the project's own test origin, in a process of its own
// so the server's CPU is never billed to the client under measurement.
// Prints one JSON line {url, sha256} per file, then serves until its stdin closes.
// Usage: node --import tsx bench/origin-child.ts <size-in-bytes> [<files>] [--behind <n>]
// One file is /throttled.bin; several (the shared queue's row, bench/workers.ts) are /throttled-<i>.bin.
// --behind n: first n small files, /slow-<i>.bin, 16 KiB each that take 1 s to answer (the configs a model's weights
// are queued behind), listed before the throttled file.
import { startOrigin } from "../test/helpers/origin.js";

const [sizeArg, countArg, behindFlag, behindArg] = process.argv.slice(2);
const size = Number(sizeArg);
const count = Number(countArg ?? 1);
const behind = behindFlag === "--behind" ? Number(behindArg) : 0;
const origin = await startOrigin();
for (let i = 0; i < behind; i++) {
  // Every request waits, the warm-up's and each repetition's alike.
  const route = origin.route(`/slow-${i}.bin`, {
    size: 16 * 1024,
    faults: Array(1000).fill({ kind: "delay", ms: 1000 }),
  });
  console.log(JSON.stringify({ url: route.url, sha256: await route.sha256() }));
}
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
