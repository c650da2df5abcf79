/**
 * The page in a real headless Chromium: add downloads through the form, watch the bars, pause and resume from the
 * keyboard, cancel, and keep a screenshot for the README (docs/screenshot.png). Chromium is Debian's
 * (DLQUEUE_CHROMIUM overrides the path); without it the suite is skipped, or fails under CI=true.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type Browser, chromium } from "playwright-core";
import { DownloadQueue } from "../src/index.js";
import { fileSha256, tempDir } from "./helpers/fs.js";
import { type StandInHub, startHub } from "./helpers/hub.js";
import { type Origin, startOrigin } from "./helpers/origin.js";
import { startService, waitUntil } from "./helpers/service.js";
import { systemPackage } from "./helpers/system.js";

const CHROMIUM = process.env.DLQUEUE_CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = join(import.meta.dirname, "../docs/screenshot.png");
const chromiumPackage = systemPackage(CHROMIUM, "chromium", existsSync(CHROMIUM));

describe("the web page in Chromium", { skip: chromiumPackage.skip }, () => {
  let origin: Origin;
  let browser: Browser;
  before(async () => {
    chromiumPackage.require();
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
    assert.match(
      (await job("model.safetensors").locator(".stats").textContent()) ?? "",
      /^100% · 1\.5 MiB of 1\.5 MiB$/,
    );
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

  test("with an auth token the page asks for it, says the list needs it, then works with it", async (t) => {
    const token = "browser-token-5f4e3d2c";
    const service = await startService(t, { authToken: token });
    const earlier = origin.route("/auth/config.json", { body: "{}" });
    const queued = await service.call("POST", "/api/v1/download_queue/i/", {
      body: { source: earlier.url, dest: "" },
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(queued.status, 200);
    const route = origin.route("/auth/vocab.json", { body: '{"a":1}' });
    const page = await browser.newPage();
    t.after(() => page.close());
    await page.goto(service.base);
    await page.getByText("Sign in required").waitFor();
    // Signed out, the list is unknown, not empty: the page says what it needs.
    const empty = page.locator("#empty");
    const signIn = "Sign in with the access token to see the downloads.";
    assert.equal(await empty.textContent(), signIn);
    assert.equal(await page.locator("li.job").count(), 0);
    await page.getByLabel("Access token").fill("wrong");
    await page.getByRole("button", { name: "Use token" }).click();
    // Submitting hides the form and reconnects; the refusal brings both back.
    await page.getByText("Sign in required").waitFor();
    await page.getByLabel("Access token").waitFor();
    assert.equal(await empty.textContent(), signIn);
    await page.getByLabel("Access token").fill(token);
    await page.getByRole("button", { name: "Use token" }).click();
    await page.getByText("Live", { exact: true }).waitFor();
    assert.equal(await page.locator("#token-form").isHidden(), true);
    await page.getByRole("progressbar", { name: "config.json" }).waitFor();
    assert.equal(await empty.isHidden(), true);

    await page.getByLabel("URL").fill(route.url);
    await page.getByRole("button", { name: "Add download" }).click();
    const item = page.locator("li.job", { has: page.getByRole("progressbar", { name: "vocab.json" }) });
    await item.getByText("completed").waitFor();
    assert.equal(await fileSha256(join(service.root, "vocab.json")), await route.sha256());
  });

  test("finished, failed and cancelled jobs of unknown size show still bars: full, empty, empty", async (t) => {
    const service = await startService(t);
    const page = await browser.newPage({ viewport: { width: 960, height: 720 } });
    t.after(() => page.close());
    await page.goto(service.base);
    await page.getByText("No downloads yet.").waitFor();
    const empty = origin.route("/sizes/empty.bin", { body: "" });
    const missing = origin.route("/sizes/missing.bin", { faults: [{ kind: "status", status: 404 }] });
    // Chunked, so its size stays unknown while it runs.
    const hanging = origin.route("/sizes/hanging.bin", {
      size: 256 * 1024,
      chunked: true,
      throttleBytesPerSec: 16_384,
    });
    const ids: Record<string, number> = {};
    for (const route of [empty, missing, hanging]) {
      const created = await service.call("POST", "/api/v1/download_queue/i/", {
        body: { source: route.url, dest: "" },
      });
      assert.equal(created.status, 200);
      ids[route.key] = (created.json as { id: number }).id;
    }
    const job = (name: string) => page.locator("li.job", { has: page.getByRole("progressbar", { name, exact: true }) });
    await job("hanging.bin").locator(".status", { hasText: "running" }).waitFor();
    // Running with no size known is the one state where a busy bar is the truth.
    assert.equal(await job("hanging.bin").locator("progress:indeterminate").count(), 1);
    assert.equal((await service.call("DELETE", `/api/v1/download_queue/i/${ids[hanging.key]}`)).status, 204);

    const expected = [
      ["empty.bin", "completed", "1"],
      ["missing.bin", "failed", "0"],
      ["hanging.bin", "cancelled", "0"],
    ] as const;
    const check = async (when: string) => {
      for (const [name, status, value] of expected) {
        const item = job(name);
        await item.locator(".status", { hasText: status }).waitFor();
        const bar = item.getByRole("progressbar");
        assert.equal(await item.locator("progress:indeterminate").count(), 0, `${name} ${when}: a busy-looking bar`);
        assert.deepEqual(
          [await bar.getAttribute("value"), await bar.getAttribute("max")],
          [value, "1"],
          `${name} ${when}`,
        );
      }
    };
    // Once as the events left them, once as the job list describes them.
    await check("after its events");
    await page.reload();
    await page.getByText("Live", { exact: true }).waitFor();
    await job("hanging.bin").waitFor();
    await check("after a reload");
    assert.equal(await fileSha256(join(service.root, "empty.bin")), await empty.sha256());
  });

  test("jobs whose dest names a file are titled by that file and show where they go", async (t) => {
    const service = await startService(t);
    const page = await browser.newPage({ viewport: { width: 960, height: 720 } });
    t.after(() => page.close());
    await page.goto(service.base);
    await page.getByText("No downloads yet.").waitFor();
    const mid = origin.route("/names/mid.bin", { size: 4096 });
    const dests = ["a/first.bin", "b/second.bin", "third.bin"];
    for (const [index, dest] of dests.entries()) {
      await page.getByLabel("URL").fill(mid.url);
      await page.getByLabel("Folder or file").fill(dest);
      await page.getByRole("button", { name: "Add download" }).click();
      await page.locator("li.job").nth(index).waitFor();
    }
    const check = async () => {
      for (const dest of dests) {
        const name = dest.split("/").at(-1) ?? dest;
        const item = page.locator("li.job", { has: page.getByRole("progressbar", { name, exact: true }) });
        await item.getByText("completed").waitFor();
        assert.equal(await item.locator(".dest").textContent(), `to ${join(service.root, dest)}`);
        assert.equal(await item.locator(".source").textContent(), mid.url);
      }
      assert.equal(await page.getByRole("progressbar", { name: "mid.bin" }).count(), 0);
    };
    await check();
    await page.reload();
    await page.getByText("Live", { exact: true }).waitFor();
    await check();
    for (const dest of dests) assert.equal(await fileSha256(join(service.root, dest)), await mid.sha256());
  });

  test("job JSON with null for unset fields (FastAPI's form, as the REST API sends it) shows no null", async (t) => {
    const service = await startService(t);
    const page = await browser.newPage({ viewport: { width: 960, height: 720 } });
    t.after(() => page.close());
    const done = origin.route("/optional/done.bin", { size: 2048 });
    const gone = origin.route("/optional/gone.bin", { faults: [{ kind: "status", status: 404 }] });
    for (const route of [done, gone]) {
      const created = await service.call("POST", "/api/v1/download_queue/i/", {
        body: { source: route.url, dest: "" },
      });
      assert.equal(created.status, 200);
    }
    await waitUntil(() => service.queue.listJobs().every((job) => job.inTerminalState), "both jobs to end");
    const listed = (await service.call("GET", "/api/v1/download_queue/")).json as Record<string, unknown>[];
    const failed = listed.find((job) => job.source === gone.url);
    assert.deepEqual([failed?.download_path, listed.find((job) => job.source === done.url)?.error_type], [null, null]);
    await page.goto(service.base);
    await page.getByText("Live", { exact: true }).waitFor();
    const item = (name: string) =>
      page.locator("li.job", { has: page.getByRole("progressbar", { name, exact: true }) });
    await item("done.bin").getByText("completed").waitFor();
    await item("gone.bin").getByText("failed").waitFor();
    assert.equal(await item("gone.bin").locator(".dest").textContent(), `to ${service.root}`);
    assert.match((await item("gone.bin").locator(".stats").textContent()) ?? "", /^0 B · HTTPError\(Not Found\)$/);
    assert.equal(await item("done.bin").locator(".stats").textContent(), "100% · 2.0 KiB of 2.0 KiB");
    assert.doesNotMatch((await page.locator("#jobs").textContent()) ?? "", /null|undefined/);
    assert.equal(await fileSha256(join(service.root, "done.bin")), await done.sha256());
  });

  test("an hf:// model added through the form is one row with a line per part; one submitted elsewhere too", async (t) => {
    const hub: StandInHub = await startHub();
    t.after(() => hub.close());
    const repo = hub.repo("org/pipeline", {
      files: {
        "model_index.json": "{}",
        "unet/diffusion_pytorch_model.safetensors": Buffer.alloc(400_000, 1),
        "vae/diffusion_pytorch_model.safetensors": Buffer.alloc(100_000, 2),
      },
    });
    hub.cdnBytesPerSec = 400_000;
    // The service reads the hub's address as the library does; this file runs in a process of its own.
    process.env.HF_ENDPOINT = hub.url;
    const service = await startService(t);
    const page = await browser.newPage({ viewport: { width: 960, height: 720 } });
    t.after(() => page.close());
    const errors: string[] = [];
    page.on("pageerror", (err) => errors.push(err.message));
    await page.goto(service.base);
    await page.getByText("No downloads yet.").waitFor();

    await page.getByLabel("URL").fill("hf://org/pipeline");
    await page.getByLabel("Folder or file").fill("");
    await page.getByRole("button", { name: "Add download" }).click();
    const row = page.locator("li.job", {
      has: page.getByRole("progressbar", { name: "hf://org/pipeline", exact: true }),
    });
    await row.getByText("completed").waitFor({ timeout: 10_000 });
    assert.equal(await page.locator("li.job").count(), 1, "the parts have no rows of their own");
    assert.deepEqual(await row.locator(".parts li span").allTextContents(), [
      "model_index.json · done",
      "unet/diffusion_pytorch_model.safetensors · done",
      "vae/diffusion_pytorch_model.safetensors · done",
    ]);
    assert.equal(await row.locator(".dest").textContent(), `to ${join(service.root, "pipeline")}`);
    assert.match((await row.locator(".stats").textContent()) ?? "", /^100% · /);
    for (const file of repo.files()) {
      assert.equal(await fileSha256(join(service.root, "pipeline", file.path)), file.sha256, file.path);
    }

    // Submitted by another client: the page learns of it from its parts' events and still shows one row.
    const other = await service.call("POST", "/api/v1/download_queue/i/", {
      body: { source: "hf://org/pipeline", dest: "again/", include: ["*.json"] },
    });
    assert.equal(other.status, 200, other.text);
    await page.locator("li.job").nth(1).getByText("completed").waitFor({ timeout: 10_000 });
    assert.equal(await page.locator("li.job").count(), 2);
    await page.reload();
    await page.getByText("Live", { exact: true }).waitFor();
    await page.locator("li.job .status", { hasText: "completed" }).nth(1).waitFor();
    assert.equal(await page.locator("li.job").count(), 2, "after a reload too");
    assert.equal(await page.locator(".parts li").count(), 4, "three parts, then one");
    assert.deepEqual(errors, []);
  });

  test("a job submitted elsewhere and cancelled while the page fetches it ends up cancelled, not running", async (t) => {
    const service = await startService(t);
    const page = await browser.newPage({ viewport: { width: 960, height: 720 } });
    t.after(() => page.close());
    await page.goto(service.base);
    await page.getByText("No downloads yet.").waitFor();
    const slow = origin.route("/race/slow.bin", { size: 1024 * 1024, throttleBytesPerSec: 64 * 1024 });
    // The page's first fetch of the job is answered "running" only after the job was cancelled.
    let held = 0;
    await page.route(/\/api\/v1\/download_queue\/i\/\d+$/, async (route) => {
      const response = await route.fetch();
      if (held++ === 0) {
        const id = new URL(route.request().url()).pathname.split("/").at(-1);
        assert.equal((await service.call("DELETE", `/api/v1/download_queue/i/${id}`)).status, 204);
        await new Promise((resolve) => setTimeout(resolve, 300));
      }
      await route.fulfill({ response });
    });
    const created = await service.call("POST", "/api/v1/download_queue/i/", { body: { source: slow.url, dest: "" } });
    assert.equal(created.status, 200);
    const item = page.locator("li.job", { has: page.getByRole("progressbar", { name: "slow.bin", exact: true }) });
    await item.locator(".status", { hasText: "cancelled" }).waitFor({ timeout: 5_000 });
    assert.ok(held >= 2, `the job was fetched again after the cancel (${held} fetches)`);
  });
});
