import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, realpath, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { downloadFileToCacheDir } from "@huggingface/hub";
import { blobPath, incompleteBlobPath, readRef, repoCacheFolder, snapshotPath } from "../src/files/hf-cache.js";
import {
  DownloadQueue,
  HubAccessError,
  HubNotFoundError,
  isModelSource,
  type MultiFileDownloadJob,
} from "../src/index.js";
import { type StandInCivitai, startCivitai } from "./helpers/civitai.js";
import { fileSha256, listFiles, tempDir } from "./helpers/fs.js";
import { type HubRepo, type StandInHub, sha256Hex, startHub } from "./helpers/hub.js";

let hub: StandInHub;
let civitai: StandInCivitai;
let home: string;
const saved = { ...process.env };

before(async () => {
  hub = await startHub();
  civitai = await startCivitai();
  home = await mkdtemp(join(tmpdir(), "dlq-hf-home-"));
  // The queue reads the endpoints and tokens as huggingface_hub does, from the environment (children inherit it).
  process.env.HF_ENDPOINT = hub.url;
  process.env.CIVITAI_ENDPOINT = civitai.url;
  process.env.HF_HOME = home;
  for (const name of ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE", "CIVITAI_TOKEN"]) {
    delete process.env[name];
  }
});
after(async () => {
  process.env = saved;
  await Promise.all([hub.close(), civitai.close(), rm(home, { recursive: true, force: true })]);
});

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

function newQueue(t: { after(fn: () => unknown): void }): DownloadQueue {
  const queue = new DownloadQueue({ logger: quiet, retries: 1, retryDelayMs: 10 });
  t.after(() => queue.stop());
  return queue;
}

const noNetwork: typeof fetch = () => Promise.reject(new Error("no network: the cache must be enough"));

/** The snapshot's files (symbolic links to blobs), relative, sorted. */
async function snapshotFiles(job: MultiFileDownloadJob): Promise<string[]> {
  const entries = await readdir(job.snapshotPath as string, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => !entry.isDirectory())
    .map((entry) => relative(job.snapshotPath as string, join(entry.parentPath, entry.name)))
    .sort();
}

describe("queue.modelDownload(): hf:// into the Hugging Face cache", () => {
  let repo: HubRepo;
  const unet = randomBytes(300_000);
  const vae = randomBytes(120_000);
  const encoder = randomBytes(90_000);
  before(() => {
    repo = hub.repo("org/pipeline", {
      files: {
        "model_index.json": '{"_class_name":"StableDiffusionPipeline"}',
        "scheduler/scheduler_config.json": '{"beta_end":0.012}',
        "unet/config.json": '{"sample_size":64}',
        // The same content at two paths: one git blob, one transfer, two links.
        "vae/config.json": '{"sample_size":64}',
        "unet/diffusion_pytorch_model.safetensors": unet,
        "vae/diffusion_pytorch_model.safetensors": vae,
        "text_encoder/model.safetensors": encoder,
        "text_encoder/model.copy.safetensors": encoder,
      },
    });
  });

  test("a nested repo: blobs by id (shared ones once), relative links, the ref; the CDN never sees the token; @huggingface/hub finds every file offline; a second run fetches nothing; a new commit fetches only the changed blob", async (t) => {
    const root = await tempDir(t);
    const folder = await repoCacheFolder(root, "model", "org/pipeline");
    const commit = repo.head();
    const queue = newQueue(t);
    hub.resetRequests();
    const job = await queue.modelDownload({ source: "hf://org/pipeline", cache: root, accessToken: "hf_user" });
    await queue.waitForJob(job);
    assert.equal(job.status, "completed", job.error);
    assert.equal(job.source, "hf://org/pipeline");
    assert.equal(job.commit, commit);
    assert.equal(job.snapshotPath, snapshotPath(folder, commit));
    assert.equal(job.downloadPath, job.snapshotPath);
    const wire = JSON.parse(JSON.stringify(job));
    assert.equal(wire.source, "hf://org/pipeline");
    assert.equal(wire.commit, commit);
    assert.equal(wire.snapshot_path, job.snapshotPath);
    assert.ok(!JSON.stringify(job).includes("hf_user"));

    const files = repo.files(commit);
    const blobIds = [...new Set(files.map((f) => f.blobId))].sort();
    assert.equal(files.length, 8);
    assert.equal(blobIds.length, 6);
    assert.equal(job.downloadParts.length, 6, "one part per blob");
    assert.deepEqual((await readdir(join(folder, "blobs"))).sort(), blobIds, "no partial, no sidecar left");
    for (const file of files) {
      const link = snapshotPath(folder, commit, file.path);
      assert.ok((await lstat(link)).isSymbolicLink(), file.path);
      assert.ok(!(await readlink(link)).startsWith("/"), "relative link");
      assert.equal(await realpath(link), await realpath(blobPath(folder, file.blobId)));
      assert.equal(sha256Hex(await readFile(link)), file.sha256, file.path);
    }
    assert.equal(await readRef(folder, "main"), commit);

    // Three LFS blobs: three CDN transfers, none with the token, which the hub's resolve URLs did get.
    const cdn = hub.cdnRequests().filter((r) => r.method === "GET");
    assert.equal(cdn.length, 3);
    assert.ok(cdn.every((r) => r.authorization === undefined));
    const resolves = hub.hubRequests().filter((r) => r.url.includes("/resolve/"));
    assert.ok(resolves.length >= 6 && resolves.every((r) => r.authorization === "Bearer hf_user"));

    for (const file of files) {
      const found = await downloadFileToCacheDir({
        repo: { type: "model", name: "org/pipeline" },
        path: file.path,
        revision: commit,
        cacheDir: root,
        hubUrl: "http://127.0.0.1:9",
        fetch: noNetwork,
      });
      assert.equal(found, snapshotPath(folder, commit, file.path));
    }

    hub.resetRequests();
    const again = await queue.modelDownload({ source: "hf://org/pipeline", cache: root });
    assert.equal(again.status, "completed", "complete as soon as it is queued");
    assert.equal((await queue.waitForJob(again)).status, "completed");
    assert.deepEqual(hub.bodyRequests(), [], "a second identical run asks for no file body");
    assert.equal(again.totalBytes, job.totalBytes);

    const unet2 = randomBytes(200_000);
    const next = repo.commit({ "unet/diffusion_pytorch_model.safetensors": unet2 });
    hub.resetRequests();
    const updated = await queue.modelDownload({ source: "hf://org/pipeline", cache: root });
    await queue.waitForJob(updated);
    assert.equal(updated.status, "completed", updated.error);
    assert.equal(updated.commit, next);
    const fetched = hub.cdnRequests().filter((r) => r.method === "GET");
    assert.deepEqual(
      fetched.map((r) => r.url.split("?")[0]?.split("/").at(-1)),
      [sha256Hex(unet2)],
      "only the changed blob",
    );
    assert.equal(await readRef(folder, "main"), next);
    assert.equal((await readdir(join(folder, "blobs"))).length, 7, "blobs shared by both commits are stored once");
    assert.deepEqual(await readFile(snapshotPath(folder, next, "unet/diffusion_pytorch_model.safetensors")), unet2);
    assert.deepEqual(await readFile(snapshotPath(folder, commit, "unet/diffusion_pytorch_model.safetensors")), unet);
    assert.equal(
      await realpath(snapshotPath(folder, next, "vae/diffusion_pytorch_model.safetensors")),
      await realpath(snapshotPath(folder, commit, "vae/diffusion_pytorch_model.safetensors")),
    );
  });

  test("into a folder: the repo's tree under dest, include/exclude as huggingface_hub matches them, nothing in the cache", async (t) => {
    const dir = await tempDir(t);
    const cacheRoot = join(dir, "cache");
    process.env.HF_HUB_CACHE = cacheRoot;
    t.after(() => delete process.env.HF_HUB_CACHE);
    const dest = join(dir, "models", "pipeline");
    const queue = newQueue(t);
    const job = await queue.modelDownload({
      source: "hf://org/pipeline",
      dest,
      include: ["*.json", "unet/*"],
      exclude: ["vae/*"],
    });
    await queue.waitForJob(job);
    assert.equal(job.status, "completed", job.error);
    assert.equal(job.snapshotPath, dest);
    assert.equal(job.commit, repo.head());
    const expected = [
      "model_index.json",
      "scheduler/scheduler_config.json",
      "unet/config.json",
      "unet/diffusion_pytorch_model.safetensors",
    ];
    assert.deepEqual(await listFiles(dest), expected);
    for (const path of expected) {
      assert.equal(await fileSha256(join(dest, path)), repo.file(path)?.sha256, path);
    }
    assert.ok(!existsSync(cacheRoot), "nothing written to the cache");
  });

  test("a corrupted byte from the CDN: ChecksumMismatch, no blob, no snapshot link for it, no ref", async (t) => {
    const root = await tempDir(t);
    const weights = randomBytes(200_000);
    const bad = hub.repo("org/corrupt", { files: { "model.safetensors": weights, "config.json": "{}" } });
    hub.corrupt(sha256Hex(weights), 150_000);
    const queue = newQueue(t);
    const job = await queue.modelDownload({ source: "hf://org/corrupt", cache: root });
    await queue.waitForJob(job);
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "ChecksumMismatch");
    const folder = await repoCacheFolder(root, "model", "org/corrupt");
    const commit = bad.head();
    assert.ok(!existsSync(blobPath(folder, sha256Hex(weights))));
    assert.ok(!existsSync(incompleteBlobPath(folder, sha256Hex(weights))), "bytes that cannot be the file are dropped");
    assert.ok(!existsSync(snapshotPath(folder, commit, "model.safetensors")));
    assert.equal(await readRef(folder, "main"), undefined);
  });

  test("a gated repo: refused before anything is written without a token or with one not granted; with HF_TOKEN granted it downloads and the CDN never sees the token", async (t) => {
    const root = await tempDir(t);
    const weights = randomBytes(100_000);
    const gated = hub.repo("org/gated", {
      gated: "auto",
      files: { "model.safetensors": weights, "config.json": "{}" },
    });
    gated.grant("hf_granted");
    const queue = newQueue(t);
    await assert.rejects(queue.modelDownload({ source: "hf://org/gated", cache: root }), (err: Error) => {
      assert.ok(err instanceof HubAccessError);
      assert.equal(err.code, "DLQ_ERR_HF_ACCESS_DENIED");
      assert.match(err.message, new RegExp(`accept its license at ${hub.url}/org/gated`));
      assert.match(err.message, /HF_TOKEN/);
      return true;
    });
    await assert.rejects(
      queue.modelDownload({ source: "hf://org/gated", cache: root, accessToken: "hf_not_granted" }),
      (err: Error) => err instanceof HubAccessError && !err.message.includes("hf_not_granted"),
    );
    assert.deepEqual(await readdir(root), [], "nothing written");

    process.env.HF_TOKEN = "hf_granted";
    t.after(() => delete process.env.HF_TOKEN);
    hub.resetRequests();
    const job = await queue.modelDownload({ source: "hf://org/gated", cache: root });
    await queue.waitForJob(job);
    assert.equal(job.status, "completed", job.error);
    const folder = await repoCacheFolder(root, "model", "org/gated");
    assert.deepEqual(await readFile(snapshotPath(folder, gated.head(), "model.safetensors")), weights);
    const cdn = hub.cdnRequests();
    assert.ok(cdn.length > 0 && cdn.every((r) => r.authorization === undefined), "no token on the CDN's origin");
    assert.ok(hub.hubRequests().every((r) => r.authorization === "Bearer hf_granted"));
    assert.ok(!JSON.stringify(job).includes("hf_granted"));
  });

  test("an unknown repo, revision or path: rejected with the name of what is missing, before anything is written", async (t) => {
    const dir = await tempDir(t);
    const root = join(dir, "cache");
    const dest = join(dir, "dest");
    const queue = newQueue(t);
    const cases: Array<[string, "repo" | "revision" | "path", RegExp]> = [
      ["hf://org/nothing-here", "repo", /Model org\/nothing-here was not found/],
      ["hf://org/pipeline@no-such-branch", "revision", /no revision "no-such-branch"/],
      ["hf://org/pipeline/unet/missing.bin", "path", /no file or folder "unet\/missing.bin"/],
    ];
    for (const [source, missing, message] of cases) {
      for (const where of [{ cache: root }, { dest }]) {
        await assert.rejects(queue.modelDownload({ source, ...where }), (err: Error) => {
          assert.ok(err instanceof HubNotFoundError, `${source}: ${err}`);
          assert.equal(err.missing, missing);
          assert.match(err.message, message);
          return true;
        });
      }
    }
    assert.ok(!existsSync(root) && !existsSync(dest));
    assert.equal(queue.listJobs().length, 0);
  });

  test("requests that cannot be right are refused before the hub is asked anything", async (t) => {
    const queue = newQueue(t);
    hub.resetRequests();
    const refusals: Array<[Parameters<DownloadQueue["modelDownload"]>[0], RegExp]> = [
      [{ source: "hf://org/pipeline", include: "*.json" as unknown as string[] }, /include must be a list/],
      [{ source: "hf://org/pipeline", dest: "x", cache: "/y" }, /not both/],
      [{ source: "hf://org/pipeline", allFiles: true }, /allFiles is for Civitai/],
      [{ source: "https://example.com/model.bin", dest: "x" }, /not a model source/],
      [{ source: "hf://org" }, /ORG\/REPO/],
    ];
    for (const [request, message] of refusals) await assert.rejects(queue.modelDownload(request), message);
    assert.deepEqual(hub.requests, []);
  });

  test("one file of a repo: a multi-file job of one part, under its repo path", async (t) => {
    const root = await tempDir(t);
    const queue = newQueue(t);
    const job = await queue.modelDownload({
      source: "hf://org/pipeline/vae/diffusion_pytorch_model.safetensors",
      cache: root,
    });
    await queue.waitForJob(job);
    assert.equal(job.status, "completed", job.error);
    assert.equal(job.downloadParts.length, 1);
    assert.deepEqual(await snapshotFiles(job), ["vae/diffusion_pytorch_model.safetensors"]);
    assert.deepEqual(await readFile(join(job.snapshotPath as string, "vae/diffusion_pytorch_model.safetensors")), vae);
  });
});

describe("queue.modelDownload(): partials", () => {
  test("a huggingface_hub partial, blobs/<sha256>.incomplete, is adopted (one request from 64 KiB before its end) and becomes the blob", async (t) => {
    const root = join(await tempDir(t), "cache");
    const weights = randomBytes(1_000_000);
    const repo = hub.repo("org/adopt-incomplete", { files: { "model.safetensors": weights } });
    const folder = await repoCacheFolder(root, "model", "org/adopt-incomplete");
    await mkdir(join(folder, "blobs"), { recursive: true });
    await writeFile(incompleteBlobPath(folder, sha256Hex(weights)), weights.subarray(0, 400_000));
    hub.resetRequests();
    const queue = newQueue(t);
    const job = await queue.modelDownload({ source: "hf://org/adopt-incomplete", cache: root });
    await queue.waitForJob(job, { timeoutMs: 20_000 });
    assert.equal(job.status, "completed", job.error);
    const fetched = hub.cdnRequests().filter((r) => r.method === "GET");
    assert.deepEqual(
      fetched.map((r) => r.range),
      [`bytes=${400_000 - 64 * 1024}-`],
    );
    assert.deepEqual(await readFile(snapshotPath(folder, repo.head(), "model.safetensors")), weights);
    assert.ok(!existsSync(incompleteBlobPath(folder, sha256Hex(weights))));
  });
});

describe("queue.modelDownload(): segments in the cache", () => {
  test("connectionsPerFile 4: the preallocated partial is blobs/<id>.downloading with its ranges sidecar, never a full-size .incomplete that huggingface_hub would take for a finished prefix; stopped twice (segments, then one stream), it resumes and completes", async (t) => {
    const dir = await tempDir(t);
    const root = join(dir, "cache");
    const store = join(dir, "queue.db");
    const weights = randomBytes(10 * 1024 * 1024);
    const repo = hub.repo("org/segmented", { files: { "model.safetensors": weights } });
    const folder = await repoCacheFolder(root, "model", "org/segmented");
    const blob = blobPath(folder, sha256Hex(weights));
    const incomplete = incompleteBlobPath(folder, sha256Hex(weights));
    hub.cdnBytesPerSec = 2_000_000;
    t.after(() => {
      hub.cdnBytesPerSec = undefined;
    });
    const runUntil = async (queue: DownloadQueue, bytes: number) => {
      await new Promise<void>((resolve) => {
        queue.on("download_progress", (p) => {
          if (p.current_bytes >= bytes) resolve();
        });
      });
      await queue.stop();
    };

    const first = new DownloadQueue({ store, logger: quiet, connectionsPerFile: 4 });
    await first.modelDownload({ source: "hf://org/segmented", cache: root });
    await runUntil(first, 2_000_000);
    assert.ok(!existsSync(incomplete), "no .incomplete while segments hold the blob");
    assert.equal((await lstat(`${blob}.downloading`)).size, weights.length, "preallocated under dlqueue's name");
    assert.ok(existsSync(`${blob}.downloading.segments.json`));

    // One stream continues the segments' contiguous prefix, under huggingface_hub's name.
    const second = new DownloadQueue({ store, logger: quiet, connectionsPerFile: 1 });
    await runUntil(second, 4_000_000);
    const prefix = (await lstat(incomplete)).size;
    assert.ok(prefix > 0 && prefix < weights.length, `a prefix of ${prefix} bytes`);
    assert.deepEqual(await readFile(incomplete), weights.subarray(0, prefix));
    assert.ok(!existsSync(`${blob}.downloading`));

    hub.cdnBytesPerSec = undefined;
    hub.resetRequests();
    const third = new DownloadQueue({ store, logger: quiet, connectionsPerFile: 4 });
    t.after(() => third.stop());
    const job = third.listMultifileJobs()[0] as MultiFileDownloadJob;
    await third.waitForJob(job, { timeoutMs: 20_000 });
    assert.equal(job.status, "completed", job.error);
    const fetched = hub.cdnRequests().filter((r) => r.method === "GET");
    assert.ok(
      fetched.every((r) => Number(/^bytes=(\d+)-/.exec(r.range ?? "")?.[1]) >= prefix - 64 * 1024),
      JSON.stringify(fetched.map((r) => r.range)),
    );
    assert.deepEqual(await readFile(snapshotPath(folder, repo.head(), "model.safetensors")), weights);
    assert.equal(await readRef(folder, "main"), repo.head());
    assert.deepEqual(await listFiles(join(folder, "blobs")), [sha256Hex(weights)]);
  });
});

describe("queue.modelDownload(): jobs sharing blobs", () => {
  test("two jobs for one repo and a third for another revision, at once, on a slow CDN: all complete, each blob fetched once, every snapshot linked and the ref right", async (t) => {
    const root = join(await tempDir(t), "cache");
    const shared = randomBytes(1_200_000);
    const old = randomBytes(400_000);
    const changed = randomBytes(500_000);
    const repo = hub.repo("org/shared", {
      files: { "shared.safetensors": shared, "changed.safetensors": old, "config.json": '{"v":1}' },
    });
    repo.branch("v1");
    const v1 = repo.head("v1");
    const main = repo.commit({ "changed.safetensors": changed });
    const folder = await repoCacheFolder(root, "model", "org/shared");
    hub.cdnBytesPerSec = 3_000_000;
    t.after(() => {
      hub.cdnBytesPerSec = undefined;
    });
    hub.resetRequests();
    const queue = newQueue(t);
    const jobs = await Promise.all([
      queue.modelDownload({ source: "hf://org/shared", cache: root }),
      queue.modelDownload({ source: "hf://org/shared", cache: root }),
      queue.modelDownload({ source: "hf://org/shared@v1", cache: root }),
    ]);
    await Promise.all(jobs.map((job) => queue.waitForJob(job, { timeoutMs: 20_000 })));
    for (const job of jobs) assert.equal(job.status, "completed", job.error);
    const fetched = hub
      .cdnRequests()
      .filter((r) => r.method === "GET")
      .map((r) => r.url.split("?")[0]?.split("/").at(-1))
      .sort();
    assert.deepEqual(fetched, [sha256Hex(shared), sha256Hex(old), sha256Hex(changed)].sort(), "each blob once");
    for (const [commit, changedContent] of [
      [main, changed],
      [v1, old],
    ] as const) {
      assert.deepEqual(await readFile(snapshotPath(folder, commit, "shared.safetensors")), shared);
      assert.deepEqual(await readFile(snapshotPath(folder, commit, "changed.safetensors")), changedContent);
      assert.equal(await readFile(snapshotPath(folder, commit, "config.json"), "utf8"), '{"v":1}');
    }
    assert.equal(await readRef(folder, "main"), main);
    assert.equal(await readRef(folder, "v1"), v1);
    assert.ok(!(await readdir(join(folder, "blobs"))).some((name) => name.includes(".")), "no partial left");
  });
});

describe("queue.modelDownload() restored from a store", () => {
  test("a gated repo's job stopped mid-blob comes back with its source, commit and plan, takes HF_TOKEN from the environment again (never from the store) and finishes", async (t) => {
    const dir = await tempDir(t);
    const root = join(dir, "cache");
    const store = join(dir, "queue.db");
    const weights = randomBytes(1_500_000);
    const gated = hub.repo("org/gated-restart", { gated: "manual", files: { "model.safetensors": weights } });
    gated.grant("hf_restart");
    process.env.HF_TOKEN = "hf_restart";
    t.after(() => delete process.env.HF_TOKEN);
    hub.cdnBytesPerSec = 1_000_000;
    t.after(() => {
      hub.cdnBytesPerSec = undefined;
    });
    const first = new DownloadQueue({ store, logger: quiet });
    const job = await first.modelDownload({ source: "hf://org/gated-restart", cache: root });
    await new Promise<void>((resolve) => {
      first.on("download_progress", (p) => {
        if (p.current_bytes >= 200_000) resolve();
      });
    });
    await first.stop();
    assert.equal(job.status, "waiting");
    assert.ok(!(await readFile(store)).includes("hf_restart"), "no token in the store");

    hub.cdnBytesPerSec = undefined;
    hub.resetRequests();
    const second = new DownloadQueue({ store, logger: quiet });
    t.after(() => second.stop());
    const restored = second.listMultifileJobs()[0] as MultiFileDownloadJob;
    assert.equal(restored.source, "hf://org/gated-restart");
    assert.equal(restored.commit, gated.head());
    await second.waitForJob(restored);
    assert.equal(restored.status, "completed", restored.error);
    const folder = await repoCacheFolder(root, "model", "org/gated-restart");
    assert.deepEqual(await readFile(snapshotPath(folder, gated.head(), "model.safetensors")), weights);
    assert.equal(await readRef(folder, "main"), gated.head());
    assert.ok(hub.hubRequests().every((r) => r.authorization === "Bearer hf_restart"));
    assert.ok(hub.cdnRequests().every((r) => r.authorization === undefined));
    assert.match(hub.cdnRequests()[0]?.range ?? "", /^bytes=[1-9]\d*-$/, "resumed");
  });
});

describe("queue.modelDownload(): Civitai", () => {
  const weights = randomBytes(150_000);
  before(() => {
    civitai.addModel({
      id: 4201,
      name: "Realistic Test",
      versions: [
        {
          id: 130072,
          requireToken: true,
          files: [
            { name: "training.zip", content: "zip", type: "Training Data", format: "Other" },
            { name: "realistic_v6.safetensors", content: weights, primary: true },
            { name: "realistic_v6.ckpt", content: "pickle", format: "PickleTensor", hashed: false },
          ],
        },
      ],
    });
    process.env.CIVITAI_TOKEN = civitai.token;
  });

  test("the primary file, sha256 checked; allFiles; CIVITAI_TOKEN to the API only; a page URL is a model source", async (t) => {
    const dir = await tempDir(t);
    const page = `${civitai.url}/models/4201?modelVersionId=130072`;
    assert.ok(isModelSource(page) && isModelSource("civitai://models/4201") && !isModelSource(`${civitai.url}/x`));
    const queue = newQueue(t);
    civitai.requests.length = 0;
    const job = await queue.modelDownload({ source: page, dest: join(dir, "primary") });
    await queue.waitForJob(job);
    assert.equal(job.status, "completed", job.error);
    assert.equal(job.source, "civitai://models/4201@130072");
    assert.equal(job.commit, undefined);
    assert.deepEqual(await listFiles(join(dir, "primary")), ["realistic_v6.safetensors"]);
    assert.equal(job.downloadParts[0]?.sha256, sha256Hex(weights));
    assert.equal(await fileSha256(join(dir, "primary", "realistic_v6.safetensors")), sha256Hex(weights));
    const cdn = civitai.requests.filter((r) => r.origin === "cdn");
    assert.ok(cdn.length > 0 && cdn.every((r) => r.authorization === undefined));
    assert.ok(civitai.requests.some((r) => r.origin === "api" && r.authorization === `Bearer ${civitai.token}`));
    assert.ok(!JSON.stringify(job).includes(civitai.token));

    const all = await queue.modelDownload({
      source: "civitai://models/4201@130072",
      dest: join(dir, "all"),
      allFiles: true,
    });
    await queue.waitForJob(all);
    assert.equal(all.status, "completed", all.error);
    assert.deepEqual(await listFiles(join(dir, "all")), [
      "realistic_v6.ckpt",
      "realistic_v6.safetensors",
      "training.zip",
    ]);

    civitai.corrupt(sha256Hex(weights));
    t.after(() => civitai.corrupt("none"));
    const bad = await queue.modelDownload({ source: "civitai://models/4201@130072", dest: join(dir, "bad") });
    await queue.waitForJob(bad);
    assert.equal(bad.status, "error");
    assert.equal(bad.errorType, "ChecksumMismatch");
    assert.deepEqual(await listFiles(join(dir, "bad")).catch(() => []), []);
  });

  test("a Civitai source needs dest", async (t) => {
    const queue = newQueue(t);
    await assert.rejects(queue.modelDownload({ source: "civitai://models/4201" }), /needs dest/);
  });
});

function child(args: string[]): ChildProcess & { lines: AsyncIterableIterator<string> } {
  const proc = spawn(process.execPath, ["--import", "tsx", "test/fixtures/model-child.ts", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  return Object.assign(proc, { lines: createInterface({ input: proc.stdout })[Symbol.asyncIterator]() });
}

describe("queue.modelDownload() after a crash", () => {
  test("SIGKILL during a repo download into the cache: a new process on the same store resumes the blob's .incomplete with a Range request, then links it and writes the ref", async (t) => {
    const dir = await tempDir(t);
    const root = join(dir, "cache");
    const store = join(dir, "queue.db");
    const big = randomBytes(3_000_000);
    const repo = hub.repo("org/slow", { files: { "big.safetensors": big, "config.json": '{"x":1}' } });
    const folder = await repoCacheFolder(root, "model", "org/slow");
    hub.cdnBytesPerSec = 1_500_000;
    t.after(() => {
      hub.cdnBytesPerSec = undefined;
    });
    hub.resetRequests();
    const first = child([store, root, "hf://org/slow"]);
    let killedAfter = 0;
    for await (const line of first.lines) {
      killedAfter = JSON.parse(line).bytes ?? killedAfter;
      if (killedAfter >= 600_000) break;
    }
    first.kill("SIGKILL");
    await once(first, "exit");
    assert.ok(killedAfter < big.length, `killed at ${killedAfter}`);
    const partial = incompleteBlobPath(folder, sha256Hex(big));
    assert.ok((await lstat(partial)).size > 0, "huggingface_hub's partial name");
    assert.ok(!existsSync(blobPath(folder, sha256Hex(big))));

    hub.cdnBytesPerSec = undefined;
    hub.resetRequests();
    const second = child([store, root]);
    let jobs: Array<{ status: string; commit?: string; snapshot_path?: string; source?: string }> = [];
    for await (const line of second.lines) jobs = JSON.parse(line).jobs ?? jobs;
    assert.equal(jobs.length, 1);
    assert.equal(jobs[0]?.status, "completed");
    assert.equal(jobs[0]?.source, "hf://org/slow");
    assert.equal(jobs[0]?.commit, repo.head());
    assert.equal(jobs[0]?.snapshot_path, snapshotPath(folder, repo.head()));
    const resumed = hub.cdnRequests().filter((r) => r.method === "GET");
    assert.equal(resumed.length, 1);
    const from = Number(/^bytes=(\d+)-$/.exec(resumed[0]?.range ?? "")?.[1]);
    assert.ok(from > 0, `resumed with ${resumed[0]?.range}`);
    assert.deepEqual(await readFile(snapshotPath(folder, repo.head(), "big.safetensors")), big);
    assert.equal(await readFile(snapshotPath(folder, repo.head(), "config.json"), "utf8"), '{"x":1}');
    assert.equal(await readRef(folder, "main"), repo.head());
    assert.ok(!existsSync(partial));
  });
});
