/**
 * Civitai sources: `civitai://models/MODEL_ID[@VERSION_ID]` and the site's page URLs, resolved through Civitai's
 * public REST API (https://developer.civitai.com/site/reference/model-versions) to the files of one model version,
 * with the SHA256 Civitai publishes so the bytes can be checked while they stream.
 */
import { HttpError } from "../errors.js";
import { apiFetch, endpointFromEnv, readJson } from "./api.js";
import {
  BadApiResponseError,
  CivitaiAccessError,
  CivitaiNotFoundError,
  InvalidSourceError,
  NoMatchingFilesError,
} from "./errors.js";

type Env = Record<string, string | undefined>;

export const CIVITAI_PROTOCOL = "civitai://";
export const DEFAULT_CIVITAI_ENDPOINT = "https://civitai.com";

export interface CivitaiSource {
  modelId: number;
  /** Absent: the model's latest version. */
  versionId?: number;
}

const EXPECTED = "civitai://models/MODEL_ID[@VERSION_ID] or https://civitai.com/models/MODEL_ID[?modelVersionId=ID]";
const SITE_HOSTS = new Set(["civitai.com", "www.civitai.com"]);

function parseId(text: string | null | undefined): number | undefined {
  if (!text || !/^\d{1,15}$/.test(text)) return undefined;
  const id = Number(text);
  return id > 0 ? id : undefined;
}

/** Whether `source` is meant as a Civitai model (the scheme, or a model page on the site or on `endpoint`). */
export function isCivitaiSource(source: string, endpoint?: string): boolean {
  if (source.startsWith(CIVITAI_PROTOCOL)) return true;
  try {
    const url = new URL(source);
    const hosts = new Set(SITE_HOSTS);
    if (endpoint) hosts.add(new URL(endpoint).host);
    return hosts.has(url.host) && /^\/models\/\d+(\/|$)/.test(url.pathname);
  } catch {
    return false;
  }
}

/**
 * `civitai://models/4201`, `civitai://models/4201@130072`, `https://civitai.com/models/4201/some-slug` and
 * `https://civitai.com/models/4201?modelVersionId=130072` (what the site's address bar shows when a version tab is
 * picked). `endpoint` lets page URLs of a Civitai mirror or stand-in parse too.
 */
export function parseCivitaiSource(source: string, endpoint?: string): CivitaiSource {
  const fail = (why: string): never => {
    throw new InvalidSourceError(source, why, EXPECTED, "DLQ_ERR_CIVITAI_SOURCE_INVALID");
  };
  if (source.startsWith(CIVITAI_PROTOCOL)) {
    const match = /^models\/([^@/?#]+)(?:@([^/?#]+))?\/?$/.exec(source.slice(CIVITAI_PROTOCOL.length));
    if (!match) return fail("the form is civitai://models/MODEL_ID[@VERSION_ID]");
    const modelId = parseId(match[1]) ?? fail(`"${match[1]}" is not a model id (a positive integer)`);
    if (match[2] === undefined) return { modelId };
    const versionId = parseId(match[2]) ?? fail(`"${match[2]}" is not a version id (a positive integer)`);
    return { modelId, versionId };
  }
  let url: URL;
  try {
    url = new URL(source);
  } catch {
    return fail("it is neither civitai:// nor a URL");
  }
  const hosts = new Set(SITE_HOSTS);
  if (endpoint) hosts.add(new URL(endpoint).host);
  if (!hosts.has(url.host)) fail(`${url.host} is not civitai.com`);
  const match = /^\/models\/([^/]+)(?:\/[^/]*)?\/?$/.exec(url.pathname);
  if (!match) return fail("it is not a model page (/models/MODEL_ID/…)");
  const modelId = parseId(match[1]) ?? fail(`"${match[1]}" is not a model id (a positive integer)`);
  const version = url.searchParams.get("modelVersionId");
  if (version === null) return { modelId };
  const versionId = parseId(version) ?? fail(`modelVersionId "${version}" is not a positive integer`);
  return { modelId, versionId };
}

/** CIVITAI_ENDPOINT, else https://civitai.com: mirrors and tests point it elsewhere. */
export function civitaiEndpoint(env: Env = process.env): string {
  return endpointFromEnv(env, "CIVITAI_ENDPOINT", DEFAULT_CIVITAI_ENDPOINT);
}

/** CIVITAI_TOKEN, trimmed; never logged. Creators can require a login for downloads, not only for early access. */
export function civitaiToken(env: Env = process.env): string | undefined {
  return env.CIVITAI_TOKEN?.trim() || undefined;
}

export interface CivitaiFile {
  name: string;
  /**
   * sizeKB × 1024, rounded. The API gives sizeKB as a float; it is exact when the float carries every bit (it
   * usually does), but treat it as the size to reserve and show, and the sha256 as the integrity check.
   */
  size: number;
  /** Lower-case hex, when Civitai has computed it (it may be missing on fresh uploads). */
  sha256?: string;
  /** civitai.com/api/download/…: redirects to a signed CDN URL that must not get the token. */
  url: string;
  primary: boolean;
  /** Civitai's file type ("Model", "Training Data", "Config", …). */
  type?: string;
}

export interface CivitaiResolved {
  endpoint: string;
  modelId: number;
  versionId: number;
  modelName?: string;
  versionName?: string;
  files: CivitaiFile[];
}

export interface ResolveCivitaiOptions {
  /** Default: civitaiEndpoint(). */
  endpoint?: string;
  /** Sent as a Bearer header to the endpoint only (never as ?token=, which would end up in job URLs and logs). */
  token?: string;
  /** Every file of the version (training data, configs, other formats) instead of the primary one. */
  allFiles?: boolean;
  fetch?: typeof fetch;
}

interface ApiFile {
  name?: unknown;
  type?: unknown;
  sizeKB?: unknown;
  primary?: unknown;
  downloadUrl?: unknown;
  hashes?: { SHA256?: unknown };
}

interface ApiVersion {
  id?: unknown;
  modelId?: unknown;
  name?: unknown;
  files?: unknown;
  model?: { name?: unknown };
}

interface ApiModel {
  id?: unknown;
  name?: unknown;
  modelVersions?: unknown;
}

/**
 * With a version: GET /api/v1/model-versions/{id} (and a check that it belongs to the model named, since a page URL
 * and a version id copied from elsewhere are easy to mix). Without: GET /api/v1/models/{id}, whose modelVersions
 * are newest first; its entries carry their files, so one request is enough.
 */
export async function resolveCivitaiSource(
  spec: CivitaiSource,
  options: ResolveCivitaiOptions = {},
): Promise<CivitaiResolved> {
  const endpoint = (options.endpoint ?? civitaiEndpoint()).replace(/\/+$/, "");
  const fetchApi = apiFetch(options.fetch);
  const get = async (path: string, what: string): Promise<unknown> => {
    const url = `${endpoint}${path}`;
    const response = await fetchApi(url, {
      headers: {
        accept: "application/json",
        ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
      },
    });
    if (!response.ok) {
      await response.body?.cancel();
      if (response.status === 404) {
        throw new CivitaiNotFoundError(`Civitai has no ${what} (or it is not published): check the id.`);
      }
      if (response.status === 401 || response.status === 403) {
        throw new CivitaiAccessError(
          `Civitai refused access to ${what} (HTTP ${response.status}): ` +
            (options.token
              ? "check that CIVITAI_TOKEN is a valid API key with access to it."
              : "set CIVITAI_TOKEN to an API key (civitai.com → Account settings → API keys)."),
          response.status,
        );
      }
      throw new HttpError(response.status, response.statusText || "Error", url);
    }
    return readJson(response, url);
  };

  let version: ApiVersion;
  let modelName: unknown;
  if (spec.versionId !== undefined) {
    version = (await get(`/api/v1/model-versions/${spec.versionId}`, `model version ${spec.versionId}`)) as ApiVersion;
    if (typeof version.modelId === "number" && version.modelId !== spec.modelId) {
      throw new CivitaiNotFoundError(
        `Civitai model version ${spec.versionId} belongs to model ${version.modelId}, not ${spec.modelId}: ` +
          `use civitai://models/${version.modelId}@${spec.versionId}.`,
      );
    }
    modelName = version.model?.name;
  } else {
    const model = (await get(`/api/v1/models/${spec.modelId}`, `model ${spec.modelId}`)) as ApiModel;
    const versions = Array.isArray(model.modelVersions) ? (model.modelVersions as ApiVersion[]) : [];
    const latest = versions[0];
    if (!latest) throw new CivitaiNotFoundError(`Civitai model ${spec.modelId} has no published version.`);
    version = latest;
    modelName = model.name;
  }
  const versionId = typeof version.id === "number" ? version.id : spec.versionId;
  if (versionId === undefined)
    throw new BadApiResponseError(`${endpoint}/api/v1/models/${spec.modelId}`, "a version without id");

  const apiFiles = Array.isArray(version.files) ? (version.files as ApiFile[]) : [];
  const files = apiFiles.map((f) => toFile(f, endpoint, versionId));
  if (files.length === 0) {
    throw new NoMatchingFilesError(`Civitai model version ${versionId} has no files to download.`);
  }
  const chosen = options.allFiles ? files : [files.find((f) => f.primary) ?? (files[0] as CivitaiFile)];
  return {
    endpoint,
    modelId: spec.modelId,
    versionId,
    ...(typeof modelName === "string" ? { modelName } : {}),
    ...(typeof version.name === "string" ? { versionName: version.name } : {}),
    files: chosen,
  };
}

function toFile(file: ApiFile, endpoint: string, versionId: number): CivitaiFile {
  const where = `${endpoint}/api/v1/model-versions/${versionId}`;
  if (typeof file.name !== "string" || typeof file.downloadUrl !== "string") {
    throw new BadApiResponseError(where, "a file without name or downloadUrl");
  }
  const sizeKB = typeof file.sizeKB === "number" && Number.isFinite(file.sizeKB) ? file.sizeKB : undefined;
  if (sizeKB === undefined || sizeKB < 0) throw new BadApiResponseError(where, `no sizeKB for ${file.name}`);
  const sha = typeof file.hashes?.SHA256 === "string" ? file.hashes.SHA256.toLowerCase() : undefined;
  return {
    name: file.name,
    size: Math.round(sizeKB * 1024),
    ...(sha && /^[0-9a-f]{64}$/.test(sha) ? { sha256: sha } : {}),
    url: file.downloadUrl,
    primary: file.primary === true,
    ...(typeof file.type === "string" ? { type: file.type } : {}),
  };
}
