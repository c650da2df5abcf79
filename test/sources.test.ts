import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  civitaiEndpoint,
  civitaiToken,
  isCivitaiSource,
  parseCivitaiSource,
  resolveCivitaiSource,
} from "../src/sources/civitai.js";
import { CivitaiNotFoundError, HubAccessError, HubNotFoundError } from "../src/sources/errors.js";
import {
  formatHfSource,
  type HfSource,
  hfEndpoint,
  hfToken,
  parseHfSource,
  repoPathFilter,
  resolveHfSource,
} from "../src/sources/hf.js";
import { type StandInCivitai, startCivitai } from "./helpers/civitai.js";
import { tempDir } from "./helpers/fs.js";
import { type HubRepo, type StandInHub, sha256Hex, startHub } from "./helpers/hub.js";

describe("hf:// parsing (as huggingface_hub's HfFileSystem)", () => {
  const cases: Array<[string, HfSource]> = [
    ["hf://org/repo", { repoType: "model", repoId: "org/repo", revision: "main" }],
    ["hf://models/org/repo", { repoType: "model", repoId: "org/repo", revision: "main" }],
    ["hf://org/repo@v1.0", { repoType: "model", repoId: "org/repo", revision: "v1.0" }],
    ["hf://org/repo/", { repoType: "model", repoId: "org/repo", revision: "main" }],
    [
      "hf://org/repo@v1.0/unet/config.json",
      { repoType: "model", repoId: "org/repo", revision: "v1.0", path: "unet/config.json" },
    ],
    ["hf://org/repo/unet", { repoType: "model", repoId: "org/repo", revision: "main", path: "unet" }],
    // An @ past ORG/REPO belongs to the file name.
    [
      "hf://org/repo/dir/file@1.txt",
      { repoType: "model", repoId: "org/repo", revision: "main", path: "dir/file@1.txt" },
    ],
    [
      "hf://datasets/org/data@refs/pr/3/train.json",
      { repoType: "dataset", repoId: "org/data", revision: "refs/pr/3", path: "train.json" },
    ],
    [
      "hf://datasets/org/data@refs/convert/parquet",
      { repoType: "dataset", repoId: "org/data", revision: "refs/convert/parquet" },
    ],
    ["hf://spaces/org/demo@main/app.py", { repoType: "space", repoId: "org/demo", revision: "main", path: "app.py" }],
    // A branch with a slash is written %2F; the revision is decoded, the path is not.
    [
      "hf://org/repo@feature%2Fsmall-vae/vae/a%20b.json",
      { repoType: "model", repoId: "org/repo", revision: "feature/small-vae", path: "vae/a%20b.json" },
    ],
    [
      "hf://black-forest-labs/FLUX.1-dev",
      { repoType: "model", repoId: "black-forest-labs/FLUX.1-dev", revision: "main" },
    ],
  ];
  for (const [source, expected] of cases) {
    test(source, () => {
      assert.deepEqual(parseHfSource(source), expected);
    });
  }

  test("formatHfSource writes the canonical spelling, which parses back to the same thing", () => {
    for (const [, spec] of cases) assert.deepEqual(parseHfSource(formatHfSource(spec)), spec);
    assert.equal(
      formatHfSource({ repoType: "dataset", repoId: "o/d", revision: "feature/x", path: "a/b" }),
      "hf://datasets/o/d@feature%2Fx/a/b",
    );
    assert.equal(formatHfSource({ repoType: "model", repoId: "o/m", revision: "refs/pr/1" }), "hf://o/m@refs/pr/1");
  });

  const bad: Array<[string, RegExp]> = [
    ["hf://", /nothing follows/],
    ["hf://gpt2", /ORG\/REPO/],
    ["hf://org/repo@", /revision after @ is empty/],
    ["hf://dataset/org/data", /plural/],
    ["hf://datasets", /no repository/],
    ["hf://buckets/org/b", /not buckets/],
    ["hf://org/re--po", /"--"/],
    ["hf://org/repo.git", /\.git/],
    ["hf://org/-repo", /not a repository id/],
    ["hf://org/repo/a//b", /empty segment/],
    ["hf://org/repo/../../etc/passwd", /\.\./],
    ["https://huggingface.co/org/repo", /does not start with hf:\/\//],
    ["hf://org/repo@bad%zz", /percent-encoding/],
  ];
  for (const [source, why] of bad) {
    test(`refuses ${source}`, () => {
      assert.throws(
        () => parseHfSource(source),
        (err: Error & { code?: string }) => {
          assert.equal(err.code, "DLQ_ERR_HF_SOURCE_INVALID");
          assert.match(err.message, why);
          assert.match(err.message, /Expected hf:\/\//);
          return true;
        },
      );
    });
  }
});

describe("include/exclude as filter_repo_objects", () => {
  const paths = [
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "README.md",
    ".gitattributes",
  ];
  const run = (include?: string[], exclude?: string[]) => paths.filter(repoPathFilter(include, exclude));

  test("* crosses folders, patterns match the whole path, case-sensitive", () => {
    assert.deepEqual(run(["*.safetensors"]), [
      "unet/diffusion_pytorch_model.safetensors",
      "unet/diffusion_pytorch_model.fp16.safetensors",
    ]);
    assert.deepEqual(run(["*.json"], ["unet/*"]), ["model_index.json", "vae/config.json"]);
    assert.deepEqual(run(["config.json"]), []);
    assert.deepEqual(run(["*.JSON"]), []);
    assert.deepEqual(
      run(undefined, ["*.fp16.*", ".*"]),
      paths.filter((p) => !p.includes("fp16") && p[0] !== "."),
    );
  });

  test("a pattern ending in / takes the folder; ?, [set], [!set]; backslashes are separators", () => {
    assert.deepEqual(
      run(["unet/"]),
      paths.filter((p) => p.startsWith("unet/")),
    );
    assert.deepEqual(run(["vae\\"]), ["vae/config.json"]);
    assert.deepEqual(run(["?ae/*"]), ["vae/config.json"]);
    assert.deepEqual(run(["[uv]*/config.json"]), ["unet/config.json", "vae/config.json"]);
    assert.deepEqual(run(["[!uv]*"], [".*"]), ["model_index.json", "README.md"]);
    assert.deepEqual(run(["[z-a]*"]), []); // reversed range: Python drops it, nothing matches
    assert.deepEqual(run(["[abc"]), []); // unclosed [ is a literal
    assert.deepEqual(run([]), paths, "an empty include list is no filter");
  });
});

describe("HF_ENDPOINT and HF_TOKEN", () => {
  test("endpoint: HF_ENDPOINT without trailing slashes, else huggingface.co; not a URL → an error naming it", () => {
    assert.equal(hfEndpoint({}), "https://huggingface.co");
    assert.equal(hfEndpoint({ HF_ENDPOINT: "https://hf-mirror.com//" }), "https://hf-mirror.com");
    assert.throws(() => hfEndpoint({ HF_ENDPOINT: "hf-mirror.com" }), /HF_ENDPOINT/);
    assert.throws(() => hfEndpoint({ HF_ENDPOINT: "ftp://x" }), /http:\/\//);
  });

  test("token: HF_TOKEN, else HUGGING_FACE_HUB_TOKEN, else HF_TOKEN_PATH, else $HF_HOME/token; trimmed", async (t) => {
    const dir = await tempDir(t);
    const home = join(dir, "hfhome");
    await mkdir(home);
    await writeFile(join(home, "token"), "  hf_fromhome\r\n");
    await writeFile(join(dir, "other"), "hf_frompath\n");
    assert.equal(hfToken({ HF_TOKEN: " hf_env\n", HF_HOME: home }), "hf_env");
    assert.equal(hfToken({ HUGGING_FACE_HUB_TOKEN: "hf_legacy", HF_HOME: home }), "hf_legacy");
    assert.equal(hfToken({ HF_TOKEN: "  ", HF_HOME: home }), "hf_fromhome");
    assert.equal(hfToken({ HF_HOME: home }), "hf_fromhome");
    assert.equal(hfToken({ HF_HOME: home, HF_TOKEN_PATH: join(dir, "other") }), "hf_frompath");
    assert.equal(hfToken({ XDG_CACHE_HOME: dir }), undefined, "no token file: no token");
    await mkdir(join(dir, "huggingface"));
    await writeFile(join(dir, "huggingface", "token"), "hf_xdg");
    assert.equal(hfToken({ XDG_CACHE_HOME: dir }), "hf_xdg");
    await writeFile(join(dir, "empty"), "\n");
    assert.equal(hfToken({ HF_TOKEN_PATH: join(dir, "empty") }), undefined);
  });
});

const DIFFUSERS: Record<string, string | Buffer> = {
  "model_index.json": '{"_class_name": "StableDiffusionXLPipeline"}',
  "README.md": "# a test pipeline\n",
  "scheduler/scheduler_config.json": '{"beta_start": 0.00085}',
  "text_encoder/config.json": '{"hidden_size": 768}',
  "text_encoder/model.safetensors": Buffer.alloc(3000, 1),
  "tokenizer/merges.txt": "a b\n",
  "tokenizer/vocab.json": '{"a": 0}',
  "unet/config.json": '{"sample_size": 128}',
  "unet/diffusion_pytorch_model.safetensors": Buffer.alloc(20_000, 2),
  "vae/config.json": '{"latent_channels": 4}',
  "vae/diffusion_pytorch_model.safetensors": Buffer.alloc(5000, 3),
};

describe("hf:// resolution against a stand-in hub", () => {
  let hub: StandInHub;
  let sdxl: HubRepo;
  const TOKEN = "hf_granted_token_1234";
  before(async () => {
    hub = await startHub({ pageSize: 3 });
    sdxl = hub.repo("stabilityai/sdxl-test", { files: DIFFUSERS });
    sdxl.tag("v1.0");
  });
  after(() => hub.close());
  const resolve = (source: string, options: Parameters<typeof resolveHfSource>[1] = {}) =>
    resolveHfSource(parseHfSource(source), { endpoint: hub.url, ...options });

  test("a nested repo: one commit, every file with size, sha256 for LFS, blob id and a resolve URL at the commit", async () => {
    hub.resetRequests();
    const resolved = await resolve("hf://stabilityai/sdxl-test");
    const commit = sdxl.head();
    assert.equal(resolved.commit, commit);
    assert.equal(resolved.revision, "main");
    assert.deepEqual(
      resolved.files.map((f) => f.path),
      Object.keys(DIFFUSERS).sort(),
    );
    for (const file of resolved.files) {
      const truth = sdxl.file(file.path);
      assert.ok(truth);
      assert.equal(file.size, truth.size, file.path);
      assert.equal(file.blobId, truth.blobId, file.path);
      assert.equal(file.sha256, truth.lfs ? sha256Hex(truth.content) : undefined, file.path);
      assert.equal(file.url, `${hub.url}/stabilityai/sdxl-test/resolve/${commit}/${file.path}`);
    }
    assert.ok(resolved.files.find((f) => f.path === "unet/diffusion_pytorch_model.safetensors")?.sha256);
    assert.equal(resolved.files.find((f) => f.path === "unet/config.json")?.sha256, undefined);
    // Pagination was followed, and every listing asked for the pinned commit, never for "main".
    const trees = hub.hubRequests().filter((r) => r.url.includes("/tree/"));
    assert.ok(trees.length >= 5, `expected several pages, got ${trees.length}`);
    for (const r of trees) assert.ok(r.url.includes(`/tree/${commit}`), r.url);
    assert.equal(hub.cdnRequests().length, 0);
  });

  test("include/exclude, a folder, a single file, a tag, a branch with a slash, a commit", async () => {
    const jsonOnly = await resolve("hf://stabilityai/sdxl-test", { include: ["*.json"], exclude: ["tokenizer/"] });
    assert.deepEqual(
      jsonOnly.files.map((f) => f.path),
      [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "unet/config.json",
        "vae/config.json",
      ],
    );
    const folder = await resolve("hf://stabilityai/sdxl-test/unet");
    assert.deepEqual(
      folder.files.map((f) => f.path),
      ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"],
    );
    const folderFiltered = await resolve("hf://stabilityai/sdxl-test/vae", { include: ["*.safetensors"] });
    assert.deepEqual(
      folderFiltered.files.map((f) => f.path),
      ["vae/diffusion_pytorch_model.safetensors"],
    );
    const one = await resolve("hf://stabilityai/sdxl-test@v1.0/vae/config.json");
    assert.deepEqual(
      one.files.map((f) => [f.path, f.size]),
      [["vae/config.json", DIFFUSERS["vae/config.json"]?.length]],
    );
    assert.equal(one.commit, sdxl.head());

    sdxl.branch("feature/small", sdxl.head());
    const onBranch = await resolve("hf://stabilityai/sdxl-test@feature%2Fsmall/README.md");
    assert.equal(onBranch.commit, sdxl.head());
    assert.equal(onBranch.revision, "feature/small");
    const byCommit = await resolve(`hf://stabilityai/sdxl-test@${sdxl.head()}/README.md`);
    assert.equal(byCommit.commit, sdxl.head());
  });

  test("a new commit on main: a new commit sha, the changed file a new blob id, the others the same", async () => {
    const repo = hub.repo("org/evolving", { files: { "a.json": "{}", "w.safetensors": Buffer.alloc(100, 7) } });
    const first = await resolve("hf://org/evolving");
    repo.commit({ "w.safetensors": Buffer.alloc(100, 8) });
    const second = await resolve("hf://org/evolving");
    assert.notEqual(second.commit, first.commit);
    const blob = (r: typeof first, p: string) => r.files.find((f) => f.path === p)?.blobId;
    assert.equal(blob(second, "a.json"), blob(first, "a.json"));
    assert.notEqual(blob(second, "w.safetensors"), blob(first, "w.safetensors"));
  });

  test("datasets and spaces use their prefixes in URLs; path segments are percent-encoded", async () => {
    hub.repo("org/data", { type: "dataset", files: { "train dir/part#1.csv": "a,b\n" } });
    const resolved = await resolve("hf://datasets/org/data");
    assert.equal(resolved.repoType, "dataset");
    assert.equal(
      resolved.files[0]?.url,
      `${hub.url}/datasets/org/data/resolve/${resolved.commit}/train%20dir/part%231.csv`,
    );
    const folder = await resolve("hf://datasets/org/data/train dir");
    assert.deepEqual(
      folder.files.map((f) => f.path),
      ["train dir/part#1.csv"],
    );
    hub.repo("org/demo", { type: "space", files: { "app.py": "print(1)\n" } });
    const space = await resolve("hf://spaces/org/demo");
    assert.match(space.files[0]?.url ?? "", /\/spaces\/org\/demo\/resolve\//);
  });

  test("an unknown repo, revision or path: an error naming which, with a stable code", async () => {
    const expectMissing = async (source: string, code: string, names: RegExp) => {
      await assert.rejects(resolve(source), (err: Error & { code?: string }) => {
        assert.ok(err instanceof HubNotFoundError, String(err));
        assert.equal(err.code, code);
        assert.match(err.message, names);
        return true;
      });
    };
    await expectMissing(
      "hf://nobody/nothing",
      "DLQ_ERR_HF_REPO_NOT_FOUND",
      /Model nobody\/nothing was not found.*HF_TOKEN/,
    );
    await expectMissing(
      "hf://datasets/stabilityai/sdxl-test",
      "DLQ_ERR_HF_REPO_NOT_FOUND",
      /Dataset stabilityai\/sdxl-test/,
    );
    await expectMissing("hf://stabilityai/sdxl-test@v9", "DLQ_ERR_HF_REVISION_NOT_FOUND", /no revision "v9"/);
    await expectMissing("hf://stabilityai/sdxl-test/unet/nope.bin", "DLQ_ERR_HF_ENTRY_NOT_FOUND", /"unet\/nope\.bin"/);
    await assert.rejects(resolve("hf://stabilityai/sdxl-test", { include: ["*.gguf"] }), {
      code: "DLQ_ERR_NO_MATCHING_FILES",
      message: /matches include "\*\.gguf"/,
    });
  });

  test("a gated repo: without a token or with one not granted, 'accept the license … set HF_TOKEN'; granted, it resolves", async () => {
    const gated = hub.repo("meta/gated-model", {
      gated: "manual",
      files: { "config.json": "{}", "w.safetensors": "x".repeat(50) },
    });
    await assert.rejects(resolve("hf://meta/gated-model"), (err: Error & { code?: string }) => {
      assert.ok(err instanceof HubAccessError);
      assert.equal(err.code, "DLQ_ERR_HF_ACCESS_DENIED");
      assert.equal(err.errorType, "GatedRepoError");
      assert.match(err.message, /accept its license at http:\/\/127\.0\.0\.1:\d+\/meta\/gated-model/);
      assert.match(err.message, /set HF_TOKEN/);
      return true;
    });
    await assert.rejects(resolve("hf://meta/gated-model", { token: "hf_not_granted_yet" }), (err: Error) => {
      assert.ok(err instanceof HubAccessError);
      assert.match(err.message, /no access yet: accept its license/);
      assert.doesNotMatch(err.message, /hf_not_granted_yet/, "the token is never in a message");
      return true;
    });
    gated.grant(TOKEN);
    hub.resetRequests();
    const resolved = await resolve("hf://meta/gated-model", { token: TOKEN });
    assert.equal(resolved.files.length, 2);
    // Every request went to the hub with the token; the access probe did not follow the redirect to the CDN.
    assert.ok(hub.hubRequests().length >= 3);
    for (const r of hub.hubRequests()) assert.equal(r.authorization, `Bearer ${TOKEN}`, r.url);
    assert.equal(hub.cdnRequests().length, 0);
  });

  test("a private repo: 'not found … set HF_TOKEN' without a token, 'cannot read' with a wrong one; any token format", async () => {
    const priv = hub.repo("acme/private", { private: true, files: { "model.safetensors": Buffer.alloc(64, 9) } });
    await assert.rejects(resolve("hf://acme/private"), {
      code: "DLQ_ERR_HF_REPO_NOT_FOUND",
      message: /if it is private, set HF_TOKEN/,
    });
    await assert.rejects(resolve("hf://acme/private", { token: "hf_someone_else" }), {
      code: "DLQ_ERR_HF_REPO_NOT_FOUND",
      message: /token in HF_TOKEN cannot read it/,
    });
    // Mirrors issue tokens without the hf_ prefix, which @huggingface/hub alone would refuse.
    priv.grant("mirror-token");
    const resolved = await resolve("hf://acme/private", { token: "mirror-token" });
    assert.equal(resolved.files[0]?.path, "model.safetensors");
  });

  test("the stand-in: an LFS resolve redirects to another origin, and fetch drops the token on the way", async () => {
    hub.resetRequests();
    const resolved = await resolve("hf://stabilityai/sdxl-test/unet/diffusion_pytorch_model.safetensors");
    const file = resolved.files[0];
    assert.ok(file?.sha256);
    const head = await fetch(file.url, {
      method: "HEAD",
      redirect: "manual",
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    assert.equal(head.status, 302);
    assert.equal(head.headers.get("x-repo-commit"), resolved.commit);
    assert.equal(head.headers.get("x-linked-etag"), `"${file.sha256}"`);
    assert.equal(head.headers.get("x-linked-size"), String(file.size));
    assert.ok(head.headers.get("location")?.startsWith(hub.cdnUrl));
    const body = Buffer.from(
      await (await fetch(file.url, { headers: { authorization: `Bearer ${TOKEN}` } })).arrayBuffer(),
    );
    assert.equal(sha256Hex(body), file.sha256);
    const cdn = hub.cdnRequests();
    assert.equal(cdn.length, 1);
    assert.equal(cdn[0]?.authorization, undefined);
    const small = await fetch(`${hub.url}/stabilityai/sdxl-test/resolve/${resolved.commit}/vae/config.json`, {
      headers: { range: "bytes=2-5" },
    });
    assert.equal(small.status, 206);
    assert.equal(small.headers.get("etag"), `"${sdxl.file("vae/config.json")?.oid}"`);
    assert.equal(await small.text(), DIFFUSERS["vae/config.json"]?.toString().slice(2, 6));
  });
});

describe("Civitai", () => {
  test("parses civitai:// and the site's page URLs", () => {
    assert.deepEqual(parseCivitaiSource("civitai://models/4201"), { modelId: 4201 });
    assert.deepEqual(parseCivitaiSource("civitai://models/4201@130072"), { modelId: 4201, versionId: 130072 });
    assert.deepEqual(parseCivitaiSource("https://civitai.com/models/4201?modelVersionId=130072"), {
      modelId: 4201,
      versionId: 130072,
    });
    assert.deepEqual(parseCivitaiSource("https://civitai.com/models/4201/realistic-vision"), { modelId: 4201 });
    assert.deepEqual(parseCivitaiSource("https://www.civitai.com/models/4201/realistic-vision?modelVersionId=7"), {
      modelId: 4201,
      versionId: 7,
    });
    assert.deepEqual(parseCivitaiSource("http://127.0.0.1:9/models/5", "http://127.0.0.1:9"), { modelId: 5 });
    assert.ok(isCivitaiSource("https://civitai.com/models/4201"));
    assert.ok(!isCivitaiSource("https://civitai.com/api/download/models/4201"), "a download URL is a plain URL");
    for (const bad of [
      "civitai://model/1",
      "civitai://models/abc",
      "civitai://models/0",
      "civitai://models/1@x",
      "https://example.com/models/1",
      "https://civitai.com/images/1",
      "https://civitai.com/models/1?modelVersionId=abc",
    ]) {
      assert.throws(() => parseCivitaiSource(bad), { code: "DLQ_ERR_CIVITAI_SOURCE_INVALID" }, bad);
    }
    assert.equal(civitaiEndpoint({}), "https://civitai.com");
    assert.equal(civitaiEndpoint({ CIVITAI_ENDPOINT: "http://127.0.0.1:1/" }), "http://127.0.0.1:1");
    assert.equal(civitaiToken({ CIVITAI_TOKEN: " k \n" }), "k");
  });

  let civitai: StandInCivitai;
  const weights = Buffer.alloc(10_000, 5);
  const oldWeights = Buffer.alloc(3000, 4);
  before(async () => {
    civitai = await startCivitai();
    civitai.addModel({
      id: 4201,
      name: "Realistic Test",
      versions: [
        {
          id: 130072,
          name: "v6",
          requireToken: true,
          files: [
            { name: "training.zip", content: "zip", type: "Training Data", format: "Other" },
            { name: "realistic_v6.safetensors", content: weights, primary: true },
            { name: "realistic_v6.ckpt", content: "pickle", format: "PickleTensor", hashed: false },
          ],
        },
        { id: 100, name: "v5", files: [{ name: "realistic_v5.safetensors", content: oldWeights }] },
      ],
    });
    civitai.addModel({
      id: 77,
      name: "Other",
      versions: [{ id: 770, files: [{ name: "x.safetensors", content: "x" }] }],
    });
  });
  after(() => civitai.close());

  test("the latest version's primary file, its sha256 lower-cased and its size; the token only to the API", async () => {
    const resolved = await resolveCivitaiSource({ modelId: 4201 }, { endpoint: civitai.url, token: civitai.token });
    assert.equal(resolved.versionId, 130072);
    assert.equal(resolved.modelName, "Realistic Test");
    assert.equal(resolved.versionName, "v6");
    assert.deepEqual(resolved.files, [
      {
        name: "realistic_v6.safetensors",
        size: weights.length,
        sha256: sha256Hex(weights),
        url: `${civitai.url}/api/download/models/130072`,
        primary: true,
        type: "Model",
      },
    ]);
    for (const r of civitai.requests) assert.equal(r.authorization, `Bearer ${civitai.token}`);
    assert.ok(civitai.requests.every((r) => r.origin === "api"));

    // The stand-in's download: the API origin checks the token and redirects; the CDN never sees it.
    const file = resolved.files[0];
    assert.ok(file);
    assert.equal((await fetch(file.url)).status, 401);
    const body = Buffer.from(
      await (await fetch(file.url, { headers: { authorization: `Bearer ${civitai.token}` } })).arrayBuffer(),
    );
    assert.equal(sha256Hex(body), file.sha256);
    const cdn = civitai.requests.filter((r) => r.origin === "cdn");
    assert.equal(cdn.length, 1);
    assert.equal(cdn[0]?.authorization, undefined);
  });

  test("all files of a version, a version by id, and errors that name the model or version", async () => {
    const all = await resolveCivitaiSource(parseCivitaiSource("civitai://models/4201@130072"), {
      endpoint: civitai.url,
      allFiles: true,
    });
    assert.deepEqual(
      all.files.map((f) => [f.name, f.primary, f.sha256 !== undefined]),
      [
        ["training.zip", false, true],
        ["realistic_v6.safetensors", true, true],
        ["realistic_v6.ckpt", false, false],
      ],
    );
    assert.match(all.files[0]?.url ?? "", /\?type=Training%20Data&format=Other$/);
    const old = await resolveCivitaiSource(
      parseCivitaiSource(`${civitai.url}/models/4201/slug?modelVersionId=100`, civitai.url),
      { endpoint: civitai.url },
    );
    assert.deepEqual(
      old.files.map((f) => [f.name, f.size, f.sha256]),
      [["realistic_v5.safetensors", oldWeights.length, sha256Hex(oldWeights)]],
    );
    await assert.rejects(resolveCivitaiSource({ modelId: 9999 }, { endpoint: civitai.url }), (err: Error) => {
      assert.ok(err instanceof CivitaiNotFoundError);
      assert.match(err.message, /model 9999/);
      return true;
    });
    await assert.rejects(resolveCivitaiSource({ modelId: 4201, versionId: 5 }, { endpoint: civitai.url }), {
      code: "DLQ_ERR_CIVITAI_NOT_FOUND",
      message: /model version 5/,
    });
    await assert.rejects(resolveCivitaiSource({ modelId: 4201, versionId: 770 }, { endpoint: civitai.url }), {
      code: "DLQ_ERR_CIVITAI_NOT_FOUND",
      message: /belongs to model 77, not 4201: use civitai:\/\/models\/77@770/,
    });
  });
});
