/**
 * The service with model sources: POST /i/ with hf:// (and Civitai) sources against the stand-in hub, whose
 * endpoint the service reads from HF_ENDPOINT as the library does (this process's own environment: each test file
 * runs in its own process).
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileSha256 } from "./helpers/fs.js";
import { type HubRepo, type StandInHub, startHub } from "./helpers/hub.js";
import { API, startService } from "./helpers/service.js";

let hub: StandInHub;
let repo: HubRepo;

before(async () => {
  hub = await startHub({ pageSize: 3 });
  repo = hub.repo("org/sd-test", {
    files: {
      "model_index.json": "{}",
      "unet/config.json": '{"a": 1}',
      "unet/diffusion_pytorch_model.safetensors": Buffer.alloc(200_000, 3),
      "vae/diffusion_pytorch_model.safetensors": Buffer.alloc(60_000, 4),
    },
  });
  hub.repo("org/gated", { gated: "manual", files: { "w.safetensors": Buffer.alloc(20_000, 1) } });
  process.env.HF_ENDPOINT = hub.url;
  for (const name of ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]) delete process.env[name];
  process.env.HF_TOKEN_PATH = "/nonexistent/dlqueue-test-token";
});
after(() => hub.close());

interface RestMulti {
  id: number;
  status: string;
  source?: string;
  commit?: string;
  snapshot_path?: string;
  dest: string;
  download_parts: { download_path: string | null }[];
}

describe("POST /i/ with an hf:// source", () => {
  it("answers the multi-file job; without dest the tree goes to <root>/<repo name>/, byte-exact; include picks", async (t) => {
    const service = await startService(t);
    const reply = await service.call("POST", `${API}/i/`, {
      body: { source: "hf://org/sd-test", include: ["unet/*"] },
    });
    assert.equal(reply.status, 200, reply.text);
    const job = reply.json as RestMulti;
    assert.equal(job.commit, repo.head());
    assert.equal(job.source, "hf://org/sd-test");
    assert.equal(job.download_parts.length, 2);
    const folder = join(service.root, "sd-test");
    assert.equal(job.snapshot_path, folder);
    await service.queue.join();
    const done = (await service.call("GET", `${API}/i/${job.id}`)).json as RestMulti;
    assert.equal(done.status, "completed");
    for (const path of ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"]) {
      assert.equal(await fileSha256(join(folder, path)), repo.file(path)?.sha256, path);
    }
    assert.ok(!existsSync(join(folder, "vae")), "include leaves vae out");
    assert.ok(!existsSync(join(folder, "model_index.json")));
  });

  it("dest stays confined to the root; a plain URL still needs dest (422), and refuses include (400)", async (t) => {
    const service = await startService(t);
    const outside = await service.call("POST", `${API}/i/`, { body: { source: "hf://org/sd-test", dest: "../x" } });
    assert.equal(outside.status, 400);
    assert.match((outside.json as { detail: string }).detail, /"\.\."/);
    const plain = `${hub.url}/org/sd-test/resolve/main/model_index.json`;
    const noDest = await service.call("POST", `${API}/i/`, { body: { source: plain } });
    assert.equal(noDest.status, 422);
    assert.deepEqual((noDest.json as { detail: unknown }).detail, [
      { loc: ["body", "dest"], msg: "Field required: add dest.", type: "missing" },
    ]);
    const include = await service.call("POST", `${API}/i/`, { body: { source: plain, dest: "", include: ["*"] } });
    assert.equal(include.status, 400);
    assert.match((include.json as { detail: string }).detail, /include applies to model sources/);
    assert.deepEqual(readdirSync(service.root), []);
  });

  it("an unknown repo is a 404 naming it, a gated one a 403 saying to accept the license; nothing written", async (t) => {
    const service = await startService(t);
    const unknown = await service.call("POST", `${API}/i/`, { body: { source: "hf://nobody/nothing" } });
    assert.equal(unknown.status, 404, unknown.text);
    assert.match((unknown.json as { detail: string }).detail, /nobody\/nothing/);
    const gated = await service.call("POST", `${API}/i/`, { body: { source: "hf://org/gated", dest: "g/" } });
    assert.equal(gated.status, 403, gated.text);
    assert.match((gated.json as { detail: string }).detail, /licen[cs]e.*HF_TOKEN/is);
    assert.deepEqual(readdirSync(service.root), []);
    assert.deepEqual(service.queue.listMultifileJobs(), []);
  });

  it("the SSRF guard applies to the hub: a loopback HF_ENDPOINT is refused unless private networks are allowed", async (t) => {
    const service = await startService(t, { allowPrivateNetworks: false });
    hub.resetRequests();
    const reply = await service.call("POST", `${API}/i/`, { body: { source: "hf://org/sd-test" } });
    assert.equal(reply.status, 400, reply.text);
    assert.match((reply.json as { detail: string }).detail, /loopback.*--allow-private-networks/);
    assert.deepEqual(hub.requests, [], "the hub is never asked");
    assert.deepEqual(readdirSync(service.root), []);
  });
});
