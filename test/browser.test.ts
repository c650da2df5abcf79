/**
 * The page in a real headless Chromium: add downloads through the form, watch the bars, pause and resume from the
 * keyboard, cancel, and keep a screenshot for the README (docs/screenshot.png).
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { type Browser, chromium } from "playwright-core";
import { DownloadQueue } from "../src/index.js";
import { fileSha256, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";
import { startService, waitUntil } from "./helpers/service.js";

const CHROMIUM = "/usr/bin/chromium";
const SCREENSHOT = join(import.meta.dirname, "../docs/screenshot.png");

let origin: Origin;
let browser: Browser;
before(async () => {
  assert.ok(
    existsSync(CHROMIUM),
    `${CHROMIUM} is missing: install it with \`apt-get install -y chromium\` (CI does) to run the browser tests.`,
  );
  origin = await startOrigin();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});
after(async () => {
  await browser?.close();
  await origin?.close();
});

test("add, watch to 100%, pause and resume by keyboard, cancel, screenshot", async (t) => {
  const service = await startService(t);
  const page = await browser.newPage({ viewport: { width: 960, height: 720 } });
  t.after(() => page.close());
  const errors: string[] = [];
  page.on("pageerror", (err) => errors.push(err.message));
  const failedRequests: string[] = [];
  page.on("response", (response) => {
    if (response.status() >= 400) {
      failedRequests.push(`${response.status()} ${response.request().method()} ${new URL(response.url()).pathname}`);
    }
  });

  await page.goto(service.base);
  await page.getByText("Live", { exact: true }).waitFor();
  await page.getByText("No downloads yet.").waitFor();

  const add = async (url: string, dest: string, priority: number) => {
    await page.getByLabel("URL").fill(url);
    await page.getByLabel("Folder or file").fill(dest);
    await page.getByLabel("Priority").fill(String(priority));
    await page.getByRole("button", { name: "Add download" }).click();
  };
  const job = (name: string) => page.locator("li.job", { has: page.getByRole("progressbar", { name, exact: true }) });

  // Added through the form; the bar (found by its label) must reach its maximum.
  const model = origin.route("/hub/model.safetensors", { size: 1536 * 1024, throttleBytesPerSec: 1024 * 1024 });
  await add(model.url, "models/", 5);
  const bar = page.getByRole("progressbar", { name: "model.safetensors" });
  await bar.waitFor();
  const seen = new Set<number>();
  await waitUntil(
    async () => {
      const [value, max] = await Promise.all([bar.getAttribute("value"), bar.getAttribute("max")]);
      seen.add(Number(value));
      return value === String(model.size) && max === String(model.size);
    },
    "the bar to reach 100%",
    20_000,
  );
  assert.ok(
    [...seen].some((value) => value > 0 && value < model.size),
    `the bar moved through ${[...seen].join(", ")}`,
  );
  await job("model.safetensors").getByText("completed").waitFor();
  assert.match((await job("model.safetensors").locator(".stats").textContent()) ?? "", /^100% · 1\.5 MiB of 1\.5 MiB$/);
  assert.equal(await fileSha256(join(service.root, "models/model.safetensors")), await model.sha256());

  // A slow one shows speed and ETA; pausing from the keyboard hands the focus to Resume.
  const slow = origin.route("/hub/vae.safetensors", { size: 32 * 1024 * 1024, throttleBytesPerSec: 256 * 1024 });
  await add(slow.url, "", 10);
  const slowJob = job("vae.safetensors");
  await slowJob
    .locator(".stats")
    .filter({ hasText: /KiB\/s · .* left/ })
    .waitFor({ timeout: 10_000 });
  await slowJob.getByRole("button", { name: "Pause vae.safetensors" }).focus();
  await page.keyboard.press("Enter");
  await slowJob.getByText("paused").waitFor();
  assert.equal(await page.locator(":focus").getAttribute("aria-label"), "Resume vae.safetensors");
  await page.keyboard.press("Enter");
  await slowJob.getByText("running").waitFor();

  // Another throttled one, cancelled with its button: the page says so, in the list and to screen readers.
  const big = origin.route("/hub/unet.safetensors", { size: 64 * 1024 * 1024, throttleBytesPerSec: 128 * 1024 });
  await add(big.url, "models/", 20);
  const bigJob = job("unet.safetensors");
  await bigJob.getByText("running").waitFor();
  await bigJob.getByRole("button", { name: "Cancel unet.safetensors" }).click();
  await bigJob.getByText("cancelled").waitFor();
  await page.locator("#announcer").filter({ hasText: "unet.safetensors: cancelled" }).waitFor();
  assert.equal(await bigJob.getByRole("button").count(), 0);
  assert.equal((await service.call("GET", "/api/v1/download_queue/")).text.includes('"status":"cancelled"'), true);

  await slowJob
    .locator(".stats")
    .filter({ hasText: /KiB\/s · .* left/ })
    .waitFor({ timeout: 10_000 });
  // Clicking the title moves the focus off the buttons, so the screenshot shows no focus ring.
  await page.locator("h1").click();
  await mkdir(join(SCREENSHOT, ".."), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });

  // A refused submission explains itself next to the form.
  await add("ftp://example.com/model.bin", "", 10);
  await page.getByRole("alert").filter({ hasText: "Unsupported URL scheme" }).waitFor();
  assert.deepEqual(errors, []);
  assert.deepEqual(failedRequests, ["400 POST /api/v1/download_queue/i/"]);
});

test("after a server restart the page reconnects, reloads the list and follows the resumed download", async (t) => {
  const dir = await tempDir(t);
  const store = join(dir, "queue.db");
  const options = { root: join(dir, "downloads"), queueOptions: { store } };
  const first = await startService(t, options);
  const page = await browser.newPage({ viewport: { width: 960, height: 720 } });
  t.after(() => page.close());
  await page.goto(first.base);
  await page.getByText("Live", { exact: true }).waitFor();

  const small = origin.route("/restart/config.json", { body: "{}" });
  const big = origin.route("/restart/weights.bin", { size: 3 * 1024 * 1024, throttleBytesPerSec: 1024 * 1024 });
  for (const route of [small, big]) {
    const created = await first.call("POST", "/api/v1/download_queue/i/", { body: { source: route.url, dest: "" } });
    assert.equal(created.status, 200);
  }
  const finished = page.locator("li.job", { has: page.getByRole("progressbar", { name: "config.json" }) });
  const bar = page.getByRole("progressbar", { name: "weights.bin" });
  const item = page.locator("li.job", { has: bar });
  await finished.getByText("completed").waitFor();
  await item.getByText("running").waitFor();
  await first.close();
  await page.getByText("Reconnecting…").waitFor();

  // While the server is down the finished job is pruned, which sends no event: only reloading the list shows it.
  const offline = new DownloadQueue({ store, maxParallelDownloads: 1 });
  offline.pruneJobs();
  await offline.stop();
  const second = await startService(t, { ...options, port: Number(new URL(first.base).port) });
  await page.getByText("Live", { exact: true }).waitFor({ timeout: 10_000 });
  await finished.waitFor({ state: "detached" });
  await item.getByText("completed").waitFor({ timeout: 20_000 });
  assert.equal(await bar.getAttribute("value"), String(big.size));
  assert.equal(await fileSha256(join(second.root, "weights.bin")), await big.sha256());
  // The resumed transfer asked only for what the first server had not fetched.
  assert.match(String(big.requests.at(-1)?.headers.range), /^bytes=[1-9]\d*-$/);
  await second.close();
});

test("with an auth token the page asks for it, then works with it", async (t) => {
  const token = "browser-token-5f4e3d2c";
  const service = await startService(t, { authToken: token });
  const route = origin.route("/auth/vocab.json", { body: '{"a":1}' });
  const page = await browser.newPage();
  t.after(() => page.close());
  await page.goto(service.base);
  await page.getByText("Sign in required").waitFor();
  await page.getByLabel("Access token").fill("wrong");
  await page.getByRole("button", { name: "Use token" }).click();
  // Submitting hides the form and reconnects; the refusal brings both back.
  await page.getByText("Sign in required").waitFor();
  await page.getByLabel("Access token").waitFor();
  await page.getByLabel("Access token").fill(token);
  await page.getByRole("button", { name: "Use token" }).click();
  await page.getByText("Live", { exact: true }).waitFor();
  assert.equal(await page.locator("#token-form").isHidden(), true);

  await page.getByLabel("URL").fill(route.url);
  await page.getByRole("button", { name: "Add download" }).click();
  const item = page.locator("li.job", { has: page.getByRole("progressbar", { name: "vocab.json" }) });
  await item.getByText("completed").waitFor();
  assert.equal(await fileSha256(join(service.root, "vocab.json")), await route.sha256());
});
