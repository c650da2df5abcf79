/**
 * A stand-in Civitai on 127.0.0.1: the public REST API's model and model-version lookups, shaped as
 * https://developer.civitai.com/site/reference/model-versions documents them, and /api/download/models/{versionId}
 * answering 307 to a signed URL on a second origin (the CDN), as civitai.com does. Requests are recorded with their
 * Authorization header so tests can prove CIVITAI_TOKEN stays on the API origin.
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { type HubRequest, serveBytes, sha256Hex } from "./hub.js";

export interface CivitaiFileSpec {
  name: string;
  content: Buffer | string;
  /** "Model" (default), "Training Data", "Config", "VAE"… */
  type?: string;
  /** "SafeTensor" (default), "PickleTensor"… */
  format?: string;
  primary?: boolean;
  /** false: publish no SHA256 (fresh uploads have none yet). */
  hashed?: boolean;
}

export interface CivitaiVersionSpec {
  id: number;
  name?: string;
  files: CivitaiFileSpec[];
  /** The creator requires a login to download. */
  requireToken?: boolean;
}

export interface CivitaiModelSpec {
  id: number;
  name?: string;
  type?: string;
  /** Newest first, as the API lists them. */
  versions: CivitaiVersionSpec[];
}

interface StoredFile extends CivitaiFileSpec {
  bytes: Buffer;
  sha256: string;
  fileId: number;
}

export interface StandInCivitai {
  url: string;
  cdnUrl: string;
  requests: Array<Omit<HubRequest, "origin"> & { origin: "api" | "cdn" }>;
  /** The API key that opens `requireToken` versions. */
  token: string;
  addModel(spec: CivitaiModelSpec): void;
  /** Flip the first byte of what the CDN sends for this file (its published SHA256 stays the right one). */
  corrupt(sha256: string): void;
  close(): Promise<void>;
}

export async function startCivitai(token = "civitai-test-key"): Promise<StandInCivitai> {
  const models = new Map<number, CivitaiModelSpec>();
  const versions = new Map<number, { model: CivitaiModelSpec; version: CivitaiVersionSpec; files: StoredFile[] }>();
  const bySha = new Map<string, StoredFile>();
  const corrupted = new Set<string>();
  const requests: StandInCivitai["requests"] = [];
  let nextFileId = 1000;
  let url = "";
  let cdnUrl = "";

  const record = (origin: "api" | "cdn", req: IncomingMessage) =>
    requests.push({
      origin,
      method: req.method ?? "GET",
      url: req.url ?? "/",
      authorization: req.headers.authorization,
      range: req.headers.range,
      at: Date.now(),
    });

  const fileJson = (versionId: number, f: StoredFile) => {
    const format = f.format ?? "SafeTensor";
    const type = f.type ?? "Model";
    const query = f.primary ? "" : `?type=${encodeURIComponent(type)}&format=${encodeURIComponent(format)}`;
    return {
      id: f.fileId,
      name: f.name,
      type,
      // The API's sizeKB is bytes / 1024 as a float.
      sizeKB: f.bytes.length / 1024,
      metadata: { format, size: "pruned", fp: "fp16" },
      pickleScanResult: "Success",
      virusScanResult: "Success",
      hashes:
        f.hashed === false
          ? {}
          : { AutoV2: f.sha256.slice(0, 10).toUpperCase(), SHA256: f.sha256.toUpperCase(), CRC32: "DAEE95B7" },
      downloadUrl: `${url}/api/download/models/${versionId}${query}`,
      primary: f.primary === true,
    };
  };

  const versionJson = (versionId: number, withModel: boolean) => {
    const entry = versions.get(versionId);
    if (!entry) return undefined;
    const { model, version, files } = entry;
    return {
      id: version.id,
      modelId: model.id,
      name: version.name ?? `v${version.id}`,
      baseModel: "SDXL 1.0",
      air: `urn:air:sdxl:checkpoint:civitai:${model.id}@${version.id}`,
      status: "Published",
      availability: "Public",
      createdAt: "2025-01-01T00:00:00.000Z",
      trainedWords: [],
      stats: { downloadCount: 0, thumbsUpCount: 0 },
      ...(withModel
        ? {
            model: {
              name: model.name ?? `model ${model.id}`,
              type: model.type ?? "Checkpoint",
              nsfw: false,
              poi: false,
            },
          }
        : {}),
      files: files.map((f) => fileJson(version.id, f)),
      images: [],
      downloadUrl: `${url}/api/download/models/${version.id}`,
    };
  };

  const json = (res: ServerResponse, status: number, body: unknown) => {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      "Content-Type": "application/json; charset=utf-8",
      "Content-Length": Buffer.byteLength(text),
    });
    res.end(text);
  };

  const api = createServer((req, res) => {
    record("api", req);
    const u = new URL(req.url ?? "/", url);
    let m = /^\/api\/v1\/models\/(\d+)$/.exec(u.pathname);
    if (m) {
      const model = models.get(Number(m[1]));
      if (!model) return json(res, 404, { error: `No model with id ${m[1]}` });
      return json(res, 200, {
        id: model.id,
        name: model.name ?? `model ${model.id}`,
        type: model.type ?? "Checkpoint",
        nsfw: false,
        creator: { username: "someone" },
        tags: [],
        modelVersions: model.versions.map((v) => versionJson(v.id, false)),
      });
    }
    m = /^\/api\/v1\/model-versions\/(\d+)$/.exec(u.pathname);
    if (m) {
      const body = versionJson(Number(m[1]), true);
      return body ? json(res, 200, body) : json(res, 404, { error: "Model not found" });
    }
    m = /^\/api\/download\/models\/(\d+)$/.exec(u.pathname);
    if (m) {
      const entry = versions.get(Number(m[1]));
      if (!entry) return json(res, 404, { error: "Model not found" });
      if (entry.version.requireToken && req.headers.authorization !== `Bearer ${token}`) {
        return json(res, 401, {
          error: "Unauthorized",
          message: "The creator of this asset requires you to be logged in to download it",
        });
      }
      const type = u.searchParams.get("type");
      const format = u.searchParams.get("format");
      const file =
        type === null
          ? (entry.files.find((f) => f.primary) ?? entry.files[0])
          : entry.files.find((f) => (f.type ?? "Model") === type && (!format || (f.format ?? "SafeTensor") === format));
      if (!file) return json(res, 404, { error: "File not found" });
      res.writeHead(307, {
        Location: `${cdnUrl}/file/${file.sha256}?signature=${randomBytes(8).toString("hex")}&name=${encodeURIComponent(file.name)}`,
      });
      return res.end();
    }
    json(res, 404, { error: "Not found" });
  });

  const cdn = createServer((req, res) => {
    record("cdn", req);
    const u = new URL(req.url ?? "/", cdnUrl);
    const sha = /^\/file\/([0-9a-f]{64})$/.exec(u.pathname)?.[1];
    const file = sha ? bySha.get(sha) : undefined;
    if (!file || !u.searchParams.get("signature")) {
      res.writeHead(403);
      res.end();
      return;
    }
    const bytes = corrupted.has(file.sha256)
      ? Buffer.from(file.bytes).fill((file.bytes[0] ?? 0) ^ 0xff, 0, 1)
      : file.bytes;
    serveBytes(req, res, bytes, { "Content-Disposition": `attachment; filename="${file.name}"` }).catch(() =>
      res.destroy(),
    );
  });

  const listen = async (server: Server) => {
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  };
  url = await listen(api);
  cdnUrl = await listen(cdn);

  return {
    url,
    cdnUrl,
    requests,
    token,
    addModel(spec) {
      models.set(spec.id, spec);
      for (const version of spec.versions) {
        const files = version.files.map((f) => {
          const bytes = Buffer.isBuffer(f.content) ? f.content : Buffer.from(f.content);
          const stored: StoredFile = { ...f, bytes, sha256: sha256Hex(bytes), fileId: nextFileId++ };
          bySha.set(stored.sha256, stored);
          return stored;
        });
        versions.set(version.id, { model: spec, version, files });
      }
    },
    corrupt(sha256) {
      corrupted.add(sha256);
    },
    async close() {
      await Promise.all(
        [api, cdn].map(
          (server) =>
            new Promise<void>((resolve) => {
              server.closeAllConnections();
              server.close(() => resolve());
            }),
        ),
      );
    },
  };
}
