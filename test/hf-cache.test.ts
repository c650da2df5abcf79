import assert from "node:assert/strict";
import { lstat, mkdir, readdir, readFile, readlink, realpath, rename, symlink, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { downloadFileToCacheDir, scanCacheDir } from "@huggingface/hub";
import {
  blobPath,
  cachedBlob,
  cachedSnapshotFile,
  hfCacheRoot,
  incompleteBlobPath,
  linkSnapshot,
  readRef,
  repoCacheFolder,
  snapshotPath,
  writeRef,
} from "../src/files/hf-cache.js";
import { type HfResolved, parseHfSource, resolveHfSource } from "../src/sources/hf.js";
import { tempDir } from "./helpers/fs.js";
import { type HubRepo, type StandInHub, startHub } from "./helpers/hub.js";

describe("where the cache is", () => {
  test("HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub", () => {
    assert.equal(hfCacheRoot({}), join(homedir(), ".cache", "huggingface", "hub"));
    assert.equal(hfCacheRoot({ XDG_CACHE_HOME: "/x" }), "/x/huggingface/hub");
    assert.equal(hfCacheRoot({ XDG_CACHE_HOME: "/x", HF_HOME: "/h" }), "/h/hub");
    assert.equal(hfCacheRoot({ HF_HOME: "/h", HUGGINGFACE_HUB_CACHE: "/legacy" }), "/legacy");
    assert.equal(hfCacheRoot({ HF_HUB_CACHE: "/c", HUGGINGFACE_HUB_CACHE: "/legacy", HF_HOME: "/h" }), "/c");
    // ~ and $VARS expand, as Python's expanduser/expandvars do.
    assert.equal(hfCacheRoot({ HF_HOME: "~/hf" }), join(homedir(), "hf", "hub"));
    assert.equal(hfCacheRoot({ HF_HUB_CACHE: "$SCRATCH/hub", SCRATCH: "/scratch" }), "/scratch/hub");
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell-style ${VAR}, which is what is being tested
    assert.equal(hfCacheRoot({ HF_HUB_CACHE: "${SCRATCH}/hub", SCRATCH: "/s" }), "/s/hub");
    assert.equal(hfCacheRoot({ HF_HUB_CACHE: "$UNSET_VAR/hub" }), "$UNSET_VAR/hub");
  });

  test("repo folders, blobs, partials and snapshots are named as huggingface_hub names them", async () => {
    const c = "0123456789abcdef0123456789abcdef01234567";
    const sha = "a".repeat(64);
    assert.equal(await repoCacheFolder("/c", "model", "stabilityai/sdxl-vae"), "/c/models--stabilityai--sdxl-vae");
    assert.equal(await repoCacheFolder("/c", "dataset", "org/data"), "/c/datasets--org--data");
    assert.equal(await repoCacheFolder("/c", "space", "org/demo"), "/c/spaces--org--demo");
    assert.equal(blobPath("/r", sha), `/r/blobs/${sha}`);
    assert.equal(incompleteBlobPath("/r", sha), `/r/blobs/${sha}.incomplete`);
    assert.equal(snapshotPath("/r", c), `/r/snapshots/${c}`);
    assert.equal(snapshotPath("/r", c, "unet/config.json"), `/r/snapshots/${c}/unet/config.json`);
    await assert.rejects(() => repoCacheFolder("/c", "model", "../x"), { code: "DLQ_ERR_INVALID_ARGUMENT" });
    assert.throws(() => blobPath("/r", "../../etc"), { code: "DLQ_ERR_INVALID_ARGUMENT" });
    assert.throws(() => snapshotPath("/r", "main"), { code: "DLQ_ERR_INVALID_ARGUMENT" });
    for (const bad of ["../evil", "/abs", "a/../b", "a/./b", "a//b", "C:evil", "\\\\host\\share", "a\\..\\b"]) {
      assert.throws(() => snapshotPath("/r", c, bad), { code: "DLQ_ERR_UNSAFE_PATH" }, bad);
    }
  });
});

const FILES: Record<string, string | Buffer> = {
  "model_index.json": '{"_class_name": "StableDiffusionXLPipeline"}',
  "README.md": "# readme\n",
  "unet/config.json": '{"sample_size": 128}',
  "unet/diffusion_pytorch_model.safetensors": Buffer.alloc(20_000, 2),
  "vae/config.json": '{"latent_channels": 4}',
  "vae/diffusion_pytorch_model.safetensors": Buffer.alloc(5000, 3),
  "text_encoder/2/model.safetensors": Buffer.alloc(3000, 1),
};

/** What the wiring will do, with plain fs for the bytes: write each blob (unless cached), link it, record the ref. */
async function materialize(repo: HubRepo, root: string, resolved: HfResolved): Promise<string[]> {
  const folder = await repoCacheFolder(root, resolved.repoType, resolved.repoId);
  const written: string[] = [];
  for (const file of resolved.files) {
    if (!(await cachedBlob(folder, file.blobId, file.size))) {
      const content = repo.file(file.path, resolved.commit)?.content;
      assert.ok(content, file.path);
      await mkdir(join(folder, "blobs"), { recursive: true });
      await writeFile(incompleteBlobPath(folder, file.blobId), content);
      await rename(incompleteBlobPath(folder, file.blobId), blobPath(folder, file.blobId));
      written.push(file.path);
    }
    await linkSnapshot(folder, resolved.commit, file.path, file.blobId);
  }
  await writeRef(folder, resolved.revision, resolved.commit);
  return written;
}

const noNetwork: typeof fetch = async (input) => {
  throw new Error(`no network expected, got a request for ${String(input)}`);
};

describe("a cache dlqueue writes is the cache huggingface_hub and @huggingface/hub read", () => {
  let hub: StandInHub;
  before(async () => {
    hub = await startHub({ pageSize: 4 });
  });
  after(() => hub.close());

  test("layout: relative links (depth-aware), refs/main = the sha without newline, found offline by @huggingface/hub", async (t) => {
    const root = await tempDir(t);
    const repo = hub.repo("org/pipeline", { files: FILES });
    const resolved = await resolveHfSource(parseHfSource("hf://org/pipeline"), { endpoint: hub.url });
    await materialize(repo, root, resolved);
    const folder = await repoCacheFolder(root, "model", "org/pipeline");
    const { commit } = resolved;

    for (const file of resolved.files) {
      const link = snapshotPath(folder, commit, file.path);
      assert.ok((await lstat(link)).isSymbolicLink(), file.path);
      const depth = file.path.split("/").length - 1;
      assert.equal(await readlink(link), `${"../".repeat(depth + 2)}blobs/${file.blobId}`, file.path);
      assert.deepEqual(await readFile(link), Buffer.from(FILES[file.path] as string | Buffer));
    }
    assert.equal(await readFile(join(folder, "refs", "main"), "utf8"), commit);
    assert.equal(await readRef(folder, "main"), commit);
    assert.deepEqual((await readdir(join(folder, "blobs"))).sort(), resolved.files.map((f) => f.blobId).sort());

    // @huggingface/hub's scanCacheDir: the repo, its one revision, its ref. (It lists only a snapshot's top-level
    // files, skipping folders; huggingface_hub's scan_cache_dir recurses. The nested ones are checked below.)
    const scan = await scanCacheDir(root);
    assert.deepEqual(scan.warnings, []);
    assert.equal(scan.repos.length, 1);
    const [cached] = scan.repos;
    assert.deepEqual(cached?.id, { type: "model", name: "org/pipeline" });
    assert.equal(cached?.revisions.length, 1);
    const revision = cached?.revisions[0];
    assert.equal(revision?.commitOid, commit);
    assert.deepEqual(revision?.refs, ["main"]);
    const topLevel = resolved.files.filter((f) => !f.path.includes("/"));
    assert.deepEqual(
      revision?.files.map((f) => f.path).sort(),
      topLevel.map((f) => join(folder, "snapshots", commit, f.path)).sort(),
    );
    for (const f of revision?.files ?? []) {
      const expected = topLevel.find((x) => f.path.endsWith(`/${x.path}`));
      assert.equal(f.blob.path, await realpath(blobPath(folder, expected?.blobId ?? "")));
      assert.equal(f.blob.size, expected?.size);
    }

    // downloadFileToCacheDir with the commit as revision returns the snapshot path, nested or not, without a request.
    for (const file of resolved.files) {
      const path = await downloadFileToCacheDir({
        repo: { type: "model", name: "org/pipeline" },
        path: file.path,
        revision: commit,
        cacheDir: root,
        hubUrl: "http://127.0.0.1:9",
        fetch: noNetwork,
      });
      assert.equal(path, snapshotPath(folder, commit, file.path));
      assert.equal((await readFile(path)).length, file.size);
    }
  });

  test("a new commit on main: only the changed blob is new; a shared blob is stored once; refs/main moves", async (t) => {
    const root = await tempDir(t);
    const repo = hub.repo("org/evolving", { files: FILES });
    const spec = parseHfSource("hf://org/evolving");
    const first = await resolveHfSource(spec, { endpoint: hub.url });
    assert.equal((await materialize(repo, root, first)).length, Object.keys(FILES).length);
    // A second run of the same commit writes nothing.
    assert.deepEqual(await materialize(repo, root, first), []);

    repo.commit({ "unet/diffusion_pytorch_model.safetensors": Buffer.alloc(20_000, 9) });
    const second = await resolveHfSource(spec, { endpoint: hub.url });
    assert.notEqual(second.commit, first.commit);
    assert.deepEqual(await materialize(repo, root, second), ["unet/diffusion_pytorch_model.safetensors"]);

    const folder = await repoCacheFolder(root, "model", "org/evolving");
    const blobs = await readdir(join(folder, "blobs"));
    assert.equal(blobs.length, Object.keys(FILES).length + 1);
    assert.equal(
      await realpath(snapshotPath(folder, first.commit, "vae/diffusion_pytorch_model.safetensors")),
      await realpath(snapshotPath(folder, second.commit, "vae/diffusion_pytorch_model.safetensors")),
    );
    assert.equal(await readRef(folder, "main"), second.commit);
    const scan = await scanCacheDir(root);
    const revisions = scan.repos[0]?.revisions ?? [];
    assert.equal(revisions.length, 2);
    assert.deepEqual(revisions.find((r) => r.commitOid === second.commit)?.refs, ["main"]);
    assert.deepEqual(revisions.find((r) => r.commitOid === first.commit)?.refs, []);
    for (const c of [first.commit, second.commit]) {
      const path = await downloadFileToCacheDir({
        repo: "org/evolving",
        path: "unet/diffusion_pytorch_model.safetensors",
        revision: c,
        cacheDir: root,
        fetch: noNetwork,
      });
      assert.deepEqual(await readFile(path), repo.file("unet/diffusion_pytorch_model.safetensors", c)?.content);
    }
  });

  test("datasets land in datasets--ORG--NAME and are found there", async (t) => {
    const root = await tempDir(t);
    const repo = hub.repo("org/data", { type: "dataset", files: { "data/train.csv": "a,b\n1,2\n" } });
    const resolved = await resolveHfSource(parseHfSource("hf://datasets/org/data"), { endpoint: hub.url });
    await materialize(repo, root, resolved);
    const path = await downloadFileToCacheDir({
      repo: "datasets/org/data",
      path: "data/train.csv",
      revision: resolved.commit,
      cacheDir: root,
      fetch: noNetwork,
    });
    assert.equal(path, join(root, "datasets--org--data", "snapshots", resolved.commit, "data", "train.csv"));
  });
});

describe("links, refs and cached blobs", () => {
  const commit = "1111111111111111111111111111111111111111";
  const a = "a".repeat(64);
  const b = "b".repeat(40);

  async function withBlobs(t: Parameters<typeof tempDir>[0]) {
    const folder = join(await tempDir(t), "models--o--r");
    await mkdir(join(folder, "blobs"), { recursive: true });
    await writeFile(blobPath(folder, a), "content A");
    await writeFile(blobPath(folder, b), "content B!");
    return folder;
  }

  test("relinking replaces the old link in one rename and leaves no temporary file behind", async (t) => {
    const folder = await withBlobs(t);
    await linkSnapshot(folder, commit, "x/y/z.bin", a);
    const result = await linkSnapshot(folder, commit, "x/y/z.bin", b);
    assert.equal(result.mode, "symlink");
    assert.equal(await readlink(result.path), `../../../../blobs/${b}`);
    assert.equal(await readFile(result.path, "utf8"), "content B!");
    assert.deepEqual(await readdir(dirname(result.path)), ["z.bin"]);
    // A stale regular file (a copy from another tool) is replaced too.
    await writeFile(snapshotPath(folder, commit, "plain.txt"), "old");
    await linkSnapshot(folder, commit, "plain.txt", a);
    assert.equal(await readFile(snapshotPath(folder, commit, "plain.txt"), "utf8"), "content A");
  });

  test("where symlinks are off (HF_HUB_DISABLE_SYMLINKS or symlinks: false), the blob is copied, and kept", async (t) => {
    const folder = await withBlobs(t);
    const byOption = await linkSnapshot(folder, commit, "w.bin", a, { symlinks: false });
    const byEnv = await linkSnapshot(folder, commit, "sub/w.bin", b, { env: { HF_HUB_DISABLE_SYMLINKS: "1" } });
    for (const [result, text] of [
      [byOption, "content A"],
      [byEnv, "content B!"],
    ] as const) {
      assert.equal(result.mode, "copy");
      assert.ok((await lstat(result.path)).isFile());
      assert.equal(await readFile(result.path, "utf8"), text);
    }
    assert.ok(await cachedBlob(folder, a, "content A".length), "a copy never moves the blob away");
  });

  test("writeRef: nothing when the revision is the commit, nested refs for refs/pr/N, only rewritten when it changed", async (t) => {
    const folder = await withBlobs(t);
    await writeRef(folder, commit, commit);
    await assert.rejects(readdir(join(folder, "refs")), { code: "ENOENT" });
    await writeRef(folder, "refs/pr/1", commit);
    assert.equal(await readFile(join(folder, "refs", "refs", "pr", "1"), "utf8"), commit);
    await writeRef(folder, "main", commit);
    const before = (await lstat(join(folder, "refs", "main"))).mtimeMs;
    await new Promise((r) => setTimeout(r, 20));
    await writeRef(folder, "main", commit);
    assert.equal((await lstat(join(folder, "refs", "main"))).mtimeMs, before);
    const other = "2".repeat(40);
    await writeRef(folder, "main", other);
    assert.equal(await readFile(join(folder, "refs", "main"), "utf8"), other);
    assert.deepEqual((await readdir(join(folder, "refs"))).sort(), ["main", "refs"]);
    await assert.rejects(writeRef(folder, "../escape", commit), { code: "DLQ_ERR_UNSAFE_PATH" });
    await assert.rejects(writeRef(folder, "main", "not-a-sha"), { code: "DLQ_ERR_INVALID_ARGUMENT" });
  });

  test("cachedBlob: a regular file of the right size; not a partial, not the wrong size, not a link", async (t) => {
    const folder = await withBlobs(t);
    assert.equal(await cachedBlob(folder, a, 9), true);
    assert.equal(await cachedBlob(folder, a, 10), false);
    const c = "c".repeat(64);
    await writeFile(incompleteBlobPath(folder, c), "partial");
    assert.equal(await cachedBlob(folder, c, 7), false);
    await symlink(blobPath(folder, a), blobPath(folder, c));
    assert.equal(await cachedBlob(folder, c, 9), false);
    await linkSnapshot(folder, commit, "f.txt", a);
    assert.equal(await cachedSnapshotFile(folder, commit, "f.txt", 9), true);
    assert.equal(await cachedSnapshotFile(folder, commit, "f.txt", 8), false);
    assert.equal(await cachedSnapshotFile(folder, commit, "g.txt", 9), false);
  });

  test("linkSnapshot refuses paths and ids that would leave the repo folder", async (t) => {
    const folder = await withBlobs(t);
    await assert.rejects(linkSnapshot(folder, commit, "../../evil", a), { code: "DLQ_ERR_UNSAFE_PATH" });
    await assert.rejects(linkSnapshot(folder, commit, "ok", "../x"), { code: "DLQ_ERR_INVALID_ARGUMENT" });
    await assert.rejects(linkSnapshot(folder, "main", "ok", a), { code: "DLQ_ERR_INVALID_ARGUMENT" });
  });
});
