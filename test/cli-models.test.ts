/**
 * `dlqueue get` with model sources (hf://, Civitai), driven as users drive it: the built dist/bin/dlqueue.js (the
 * bundle npm installs as `dlqueue`) in a child process, HF_ENDPOINT / CIVITAI_ENDPOINT pointing at the stand-ins,
 * HF_HUB_CACHE at a temporary folder. Run `npm run build` first.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type StandInCivitai, startCivitai } from "./helpers/civitai.js";
import { type HubRepo, type StandInHub, startHub } from "./helpers/hub.js";
import { systemPackage } from "./helpers/system.js";

const CLI = fileURLToPath(new URL("../dist/bin/dlqueue.js", import.meta.url));

/** A diffusers-style repo: nested folders, LFS weights (on the CDN) and small git files. */
const PIPELINE = {
  "model_index.json": '{"_class_name": "StableDiffusionPipeline"}',
  "unet/config.json": '{"in_channels": 4}',
  "unet/diffusion_pytorch_model.safetensors": Buffer.alloc(300_000, 11),
  "vae/config.json": '{"latent_channels": 4}',
  "vae/diffusion_pytorch_model.safetensors": Buffer.alloc(120_000, 22),
  "text_encoder/model.safetensors": Buffer.alloc(50_000, 33),
  "README.md": "# pipeline\n",
};

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

let hub: StandInHub;
let pipeline: HubRepo;
let work: string;
let count = 0;

function sha256File(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** A user with no tokens set, HF_HOME and the cache in the test's own folders. */
function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const base = { ...process.env };
  for (const name of ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "CIVITAI_TOKEN", "HF_HUB_CACHE"])
    delete base[name];
  for (const name of ["NODE_OPTIONS", "NODE_DEBUG", "NODE_TEST_CONTEXT"]) delete base[name];
  return { ...base, HF_HOME: join(work, "hf-home"), HF_ENDPOINT: hub.url, ...extra };
}

function run(args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<Finished> {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: options.cwd ?? work,
    env: options.env ?? env(),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
  });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  return new Promise((done) => child.on("close", (code) => done({ code, stdout, stderr })));
}

function fresh(name: string): string {
  const dir = join(work, `${name}-${++count}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Every file of `repo` at `revision` under `folder` (through the snapshot's links when it is one), byte for byte. */
function assertTree(folder: string, repo: HubRepo, paths = repo.files().map((file) => file.path)): void {
  for (const path of paths) {
    const file = repo.file(path);
    assert.ok(file, `${path} is in the repo`);
    assert.equal(sha256File(join(folder, path)), file.sha256, `sha256 of ${path}`);
  }
}

before(async () => {
  work = realpathSync(mkdtempSync(join(tmpdir(), "dlq-cli-models-")));
  hub = await startHub({ pageSize: 3 });
  pipeline = hub.repo("org/pipeline", { files: PIPELINE });
});
after(async () => {
  await hub.close();
  rmSync(work, { recursive: true, force: true });
});

describe("dlqueue get hf://", () => {
  it("into the HF cache: -q prints only the snapshot path; every file there equals the hub's; a second run fetches no body", async () => {
    const cache = fresh("cache");
    const runEnv = env({ HF_HUB_CACHE: cache });
    const first = await run(["get", "-q", "hf://org/pipeline"], { env: runEnv });
    assert.equal(first.code, 0, first.stderr);
    const snapshot = join(realpathSync(cache), "models--org--pipeline", "snapshots", pipeline.head());
    assert.equal(first.stdout, `${snapshot}\n`, "stdout is the snapshot's path and nothing else");
    assertTree(snapshot, pipeline);
    assert.equal(readFileSync(join(cache, "models--org--pipeline", "refs", "main"), "utf8"), pipeline.head());

    hub.resetRequests();
    const second = await run(["get", "hf://org/pipeline"], { env: runEnv });
    assert.equal(second.code, 0, second.stderr);
    assert.deepEqual(hub.bodyRequests(), [], "no file body is fetched again");
    const lines = second.stdout.trimEnd().split("\n");
    assert.equal(lines.at(-1), snapshot, "the path is the last line after the summary");
    for (const path of Object.keys(PIPELINE)) {
      assert.match(second.stdout, new RegExp(`${path.replace(/[.]/g, "\\.")}.*already complete`), path);
    }
  });

  it("-d DIR: the repo's tree under DIR (nothing in the cache); --include / --exclude pick the files; parts named by repo path", async () => {
    const cache = fresh("cache");
    const dest = fresh("models");
    const finished = await run(
      ["get", "hf://org/pipeline", "-d", dest, "--include", "*.json", "--include", "unet/*", "--exclude", "vae/*"],
      { env: env({ HF_HUB_CACHE: cache }) },
    );
    assert.equal(finished.code, 0, finished.stderr);
    const wanted = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"];
    assertTree(dest, pipeline, wanted);
    assert.ok(!existsSync(join(dest, "vae")), "--exclude vae/* leaves vae out");
    assert.ok(!existsSync(join(dest, "text_encoder")), "--include leaves the rest out");
    assert.deepEqual(readdirSync(cache), [], "nothing written to the cache with -d");
    assert.equal(finished.stdout.trimEnd().split("\n").at(-1), resolve(dest));
    // Plain lines (stdout is a pipe) name each part by its path in the repo.
    assert.match(finished.stdout, /unet\/diffusion_pytorch_model\.safetensors: done/);
  });

  it("--json: the model's job line carries its source, commit and snapshot_path; no bare path line", async () => {
    const cache = fresh("cache");
    const finished = await run(["get", "--json", "hf://org/pipeline/unet"], { env: env({ HF_HUB_CACHE: cache }) });
    assert.equal(finished.code, 0, finished.stderr);
    const lines = finished.stdout
      .trimEnd()
      .split("\n")
      .map((line) => JSON.parse(line) as { event: string; job?: Record<string, unknown> });
    const model = lines.find((line) => line.event === "job" && line.job?.download_parts !== undefined);
    assert.ok(model?.job, finished.stdout);
    assert.equal(model.job.commit, pipeline.head());
    assert.equal(model.job.status, "completed");
    assert.equal(
      model.job.snapshot_path,
      join(realpathSync(cache), "models--org--pipeline", "snapshots", pipeline.head()),
    );
    assert.equal((model.job.download_parts as unknown[]).length, 2, "the two files under unet/");
    assertTree(model.job.snapshot_path as string, pipeline, ["unet/config.json"]);
  });

  it("an unknown repo: exit 1, the message names it and says what to do, nothing written; other sources still run", async () => {
    const cache = fresh("cache");
    const dest = fresh("plain");
    const url = `${hub.url}/org/pipeline/resolve/main/model_index.json`;
    const finished = await run(["get", "-q", "hf://nobody/nothing", url, "-d", dest], {
      env: env({ HF_HUB_CACHE: cache }),
    });
    assert.equal(finished.code, 1, finished.stderr);
    assert.match(finished.stderr, /RepositoryNotFoundError hf:\/\/nobody\/nothing/);
    assert.match(finished.stderr, /nobody\/nothing.*HF_TOKEN/s);
    assert.equal(finished.stdout, "", "no path printed for a model that failed");
    assert.deepEqual(readdirSync(cache), [], "nothing in the cache");
    assert.deepEqual(readdirSync(dest), ["model_index.json"], "only the plain URL's file in -d");
    assert.equal(sha256File(join(dest, "model_index.json")), pipeline.file("model_index.json")?.sha256);
  });

  it("SIGKILL mid-download, then the same command resumes the blob with a Range request and completes", async () => {
    const cache = fresh("cache");
    const runEnv = env({ HF_HUB_CACHE: cache });
    const big = pipeline.file("unet/diffusion_pytorch_model.safetensors");
    assert.ok(big);
    hub.cdnBytesPerSec = 200_000;
    const child = spawn(process.execPath, [CLI, "get", "--json", "hf://org/pipeline"], {
      cwd: work,
      env: runEnv,
      stdio: ["ignore", "pipe", "ignore"],
    });
    let stdout = "";
    await new Promise<void>((done) => {
      child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
        stdout += chunk;
        const moved = stdout
          .split("\n")
          .filter((line) => line.startsWith("{"))
          .map((line) => JSON.parse(line) as { event: string; source?: string; current_bytes?: number })
          .some(
            (line) =>
              line.event === "download_progress" &&
              line.source?.endsWith(big.path) === true &&
              (line.current_bytes ?? 0) > 50_000,
          );
        if (moved) done();
      });
    });
    const exited = new Promise((done) => child.on("close", done));
    child.kill("SIGKILL");
    await exited;
    hub.cdnBytesPerSec = undefined;
    assert.ok(!existsSync(join(cache, "models--org--pipeline", "snapshots", pipeline.head(), big.path)));

    hub.resetRequests();
    const again = await run(["get", "-q", "hf://org/pipeline"], { env: runEnv });
    assert.equal(again.code, 0, again.stderr);
    const snapshot = join(cache, "models--org--pipeline", "snapshots", pipeline.head());
    assert.equal(again.stdout, `${snapshot}\n`);
    assertTree(snapshot, pipeline);
    const bigRequests = hub.cdnRequests().filter((r) => r.method === "GET" && r.url.includes(big.sha256));
    assert.ok(
      bigRequests.length > 0 && bigRequests.every((r) => r.range !== undefined && !/^bytes=0-/.test(r.range)),
      `the big blob resumed: ${JSON.stringify(bigRequests.map((r) => r.range))}`,
    );
  });

  it("a malformed hf:// source is a usage error (exit 2) before anything starts", async () => {
    const finished = await run(["get", "hf://just-a-name"]);
    assert.equal(finished.code, 2);
    assert.match(finished.stderr, /hf:\/\/just-a-name/);
    assert.deepEqual(
      hub.bodyRequests().filter((r) => r.url.includes("just-a-name")),
      [],
    );
    const url = `${hub.url}/org/pipeline/resolve/main/README.md`;
    const include = await run(["get", url, "--include", "*.json"]);
    assert.equal(include.code, 2);
    assert.match(include.stderr, /--include and --exclude pick the files of hf:\/\/ sources/);
    const allFiles = await run(["get", "hf://org/pipeline", "--all-files"]);
    assert.equal(allFiles.code, 2);
    assert.match(allFiles.stderr, /--all-files is for Civitai sources/);
  });

  it("-i: model lines with dest= and include=, among plain URLs", async () => {
    const dest = fresh("list");
    const list = join(dest, "list.txt");
    writeFileSync(
      list,
      [
        "hf://org/pipeline dest=sd include=vae/*",
        `${hub.url}/org/pipeline/resolve/main/README.md`,
        "  dest=readme.md",
        "",
      ].join("\n"),
    );
    const finished = await run(["get", "-q", "-i", list, "-d", dest], { env: env({ HF_HUB_CACHE: fresh("cache") }) });
    assert.equal(finished.code, 0, finished.stderr);
    assertTree(join(dest, "sd"), pipeline, ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]);
    assert.ok(!existsSync(join(dest, "sd", "unet")));
    assert.equal(sha256File(join(dest, "readme.md")), pipeline.file("README.md")?.sha256);
    assert.equal(finished.stdout, `${resolve(dest, "sd")}\n`);
  });

  it("a gated repo: HF_TOKEN opens it, goes to the hub only (never to the CDN) and is never printed", async () => {
    const token = "hf_cliSecretToken123";
    const gated = hub.repo("org/gated", { gated: "manual", files: { "w.safetensors": Buffer.alloc(40_000, 5) } });
    const dest = fresh("gated");
    const refused = await run(["get", "hf://org/gated", "-d", dest]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /accept.*licen[cs]e.*HF_TOKEN/is);
    assert.deepEqual(readdirSync(dest), [], "nothing written without access");

    gated.grant(token);
    hub.resetRequests();
    const granted = await run(["get", "hf://org/gated", "-d", dest], { env: env({ HF_TOKEN: token }) });
    assert.equal(granted.code, 0, granted.stderr);
    assertTree(dest, gated);
    assert.ok(hub.cdnRequests().length > 0, "the weights came from the CDN");
    for (const request of hub.cdnRequests()) assert.equal(request.authorization, undefined, request.url);
    assert.ok(hub.hubRequests().some((request) => request.authorization === `Bearer ${token}`));
    assert.ok(!`${granted.stdout}${granted.stderr}`.includes(token));
  });
});

describe("dlqueue get: --token and resume with model sources", () => {
  it("--token opens a gated hf:// repo given on the command line: to the hub only (never the CDN), never printed", async () => {
    const token = "hf_cliArgumentToken456";
    const gated = hub.repo("org/gated-arg", { gated: "manual", files: { "w.safetensors": Buffer.alloc(40_000, 6) } });
    gated.grant(token);
    const dest = fresh("gated-arg");
    hub.resetRequests();
    const granted = await run(["get", "hf://org/gated-arg", "-d", dest, "--token", token]);
    assert.equal(granted.code, 0, granted.stderr);
    assertTree(dest, gated);
    assert.ok(hub.cdnRequests().length > 0, "the weights came from the CDN");
    for (const request of hub.cdnRequests()) assert.equal(request.authorization, undefined, request.url);
    assert.ok(hub.hubRequests().every((request) => request.authorization === `Bearer ${token}`));
    assert.ok(!`${granted.stdout}${granted.stderr}`.includes(token));
  });

  it("--token opens a Civitai version that needs a key: to the API only, never to its CDN", async () => {
    const civitai = await startCivitai("civitai-arg-key");
    try {
      civitai.addModel({
        id: 5150,
        name: "Keyed",
        versions: [
          {
            id: 5151,
            name: "v1",
            requireToken: true,
            files: [{ name: "keyed.safetensors", content: Buffer.alloc(30_000, 4), primary: true }],
          },
        ],
      });
      const dest = fresh("civitai-arg");
      const civitaiEnv = env({ CIVITAI_ENDPOINT: civitai.url });
      const refused = await run(["get", "civitai://models/5150@5151", "-d", dest], { env: civitaiEnv });
      assert.equal(refused.code, 1, "refused without a key");
      const granted = await run(["get", "-q", "civitai://models/5150@5151", "-d", dest, "--token", "civitai-arg-key"], {
        env: civitaiEnv,
      });
      assert.equal(granted.code, 0, granted.stderr);
      assert.deepEqual(readFileSync(join(dest, "keyed.safetensors")), Buffer.alloc(30_000, 4));
      const cdn = civitai.requests.filter((r) => r.origin === "cdn");
      assert.ok(cdn.length > 0);
      for (const request of cdn) assert.equal(request.authorization, undefined, request.url);
      assert.ok(!`${granted.stdout}${granted.stderr}`.includes("civitai-arg-key"));
    } finally {
      await civitai.close();
    }
  });

  it("dlqueue resume finishes a model job a killed `get --state` left and prints its snapshot path, as get does", async () => {
    const cache = fresh("cache");
    const state = join(fresh("state"), "queue.db");
    const runEnv = env({ HF_HUB_CACHE: cache });
    const big = pipeline.file("unet/diffusion_pytorch_model.safetensors");
    assert.ok(big);
    hub.cdnBytesPerSec = 200_000;
    const child = spawn(process.execPath, [CLI, "get", "--json", "--state", state, "hf://org/pipeline"], {
      cwd: work,
      env: runEnv,
      stdio: ["ignore", "pipe", "ignore"],
    });
    let stdout = "";
    await new Promise<void>((done) => {
      child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
        stdout += chunk;
        if (/"event":"download_progress".*"current_bytes":[1-9]\d{4}/.test(stdout)) done();
      });
    });
    const exited = new Promise((done) => child.on("close", done));
    child.kill("SIGKILL");
    await exited;
    hub.cdnBytesPerSec = undefined;
    const snapshot = join(cache, "models--org--pipeline", "snapshots", pipeline.head());
    assert.ok(!existsSync(join(snapshot, big.path)));

    const resumed = await run(["resume", "-q", "--state", state], { env: runEnv });
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.equal(resumed.stdout, `${snapshot}\n`);
    assertTree(snapshot, pipeline);
  });
});

const utilLinuxScript = systemPackage(
  "util-linux's `script`",
  "util-linux",
  (() => {
    try {
      return execFileSync("script", ["--version"], { encoding: "utf8" }).includes("util-linux");
    } catch {
      return false;
    }
  })(),
);

describe("dlqueue get hf:// on a terminal", { skip: utilLinuxScript.skip }, () => {
  it("bars name the parts by repo path (not the cache blob), the total line names the model", async () => {
    utilLinuxScript.require();
    const cache = fresh("cache");
    hub.cdnBytesPerSec = 1_000_000;
    const quote = (word: string) => `'${word.replaceAll("'", `'\\''`)}'`;
    const command = `stty cols 150 rows 40 && exec ${[process.execPath, CLI, "get", "hf://org/pipeline"].map(quote).join(" ")}`;
    const child = spawn("script", ["-qfec", command, "/dev/null"], {
      cwd: work,
      env: env({ HF_HUB_CACHE: cache }),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let screen = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      screen += chunk;
    });
    const code = await new Promise((done) => child.on("close", done));
    hub.cdnBytesPerSec = undefined;
    assert.equal(code, 0, screen);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping terminal escape sequences is the point
    const text = screen.replace(/\u001b(?:\[[0-9;?]*[A-Za-z]|[78])/g, "");
    // A bar's last line ends "done in …"; the summary's rows do not.
    // Long names are cut in the middle, so the folder and the extension stay.
    assert.match(text, /unet\/diffusion_p\S*\.safetensors +\[.*done in/);
    assert.match(text, /vae\/config\.json +\[.*done in/);
    assert.match(text, /hf:\/\/org\/pipeline 7\/7 done/);
    const blob = pipeline.file("unet/diffusion_pytorch_model.safetensors")?.sha256 ?? "";
    assert.ok(!text.includes(blob.slice(0, 12)), "no bar named by the blob's hash");
  });
});

describe("dlqueue get civitai://", () => {
  let civitai: StandInCivitai;
  before(async () => {
    civitai = await startCivitai();
    civitai.addModel({
      id: 4201,
      name: "Realistic Test",
      versions: [
        {
          id: 130072,
          name: "v6",
          files: [
            { name: "realistic_v6.safetensors", content: Buffer.alloc(70_000, 9), primary: true },
            { name: "realistic_v6.vae.pt", content: Buffer.alloc(9_000, 8), type: "VAE", format: "PickleTensor" },
          ],
        },
      ],
    });
  });
  after(() => civitai.close());

  it("without -d into the current folder, the primary file only; --all-files every file; the folder printed", async () => {
    const cwd = fresh("civitai");
    const civitaiEnv = env({ CIVITAI_ENDPOINT: civitai.url });
    const primary = await run(["get", "-q", "civitai://models/4201@130072"], { env: civitaiEnv, cwd });
    assert.equal(primary.code, 0, primary.stderr);
    assert.deepEqual(readdirSync(cwd), ["realistic_v6.safetensors"]);
    assert.deepEqual(readFileSync(join(cwd, "realistic_v6.safetensors")), Buffer.alloc(70_000, 9));
    assert.equal(primary.stdout, `${realpathSync(cwd)}\n`);

    const all = await run(["get", "-q", "--all-files", `${civitai.url}/models/4201?modelVersionId=130072`], {
      env: civitaiEnv,
      cwd,
    });
    assert.equal(all.code, 0, all.stderr);
    assert.deepEqual(readdirSync(cwd).sort(), ["realistic_v6.safetensors", "realistic_v6.vae.pt"]);
    assert.deepEqual(readFileSync(join(cwd, "realistic_v6.vae.pt")), Buffer.alloc(9_000, 8));
  });
});
