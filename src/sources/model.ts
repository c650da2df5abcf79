/**
 * Model sources (`hf://…`, Civitai) turned into what the queue runs: the files of one commit or one model version,
 * each with the hub's sha256 and size, placed either under a folder or in the Hugging Face cache. Everything that
 * can fail for a reason the user must fix (unknown repo, gated, nothing matching) fails here, before the queue
 * writes anything.
 */
import { basename, resolve } from "node:path";
import { InvalidArgumentError } from "../errors.js";
import {
  blobPath,
  cachedBlob,
  finishSnapshot,
  hfCacheRoot,
  linkBlob,
  repoCacheFolder,
  type SnapshotPlan,
  snapshotPath,
} from "../files/hf-cache.js";
import { sanitizeFileName } from "../files/names.js";
import type { ModelOrigin } from "../job.js";
import type { ModelDownloadRequest } from "../options.js";
import { civitaiEndpoint, civitaiToken, isCivitaiSource, parseCivitaiSource, resolveCivitaiSource } from "./civitai.js";
import { formatHfSource, hfEndpoint, hfToken, isHfSource, parseHfSource, resolveHfSource } from "./hf.js";

type Env = Record<string, string | undefined>;

/** Whether `source` names a model (hf://, civitai://, a Civitai model page) rather than a file URL. */
export function isModelSource(source: string, env: Env = process.env): boolean {
  if (isHfSource(source)) return true;
  let endpoint: string | undefined;
  try {
    endpoint = civitaiEndpoint(env);
  } catch {
    // A malformed CIVITAI_ENDPOINT still leaves civitai:// and civitai.com pages recognizable; resolving says why.
  }
  return isCivitaiSource(source, endpoint);
}

/** One file of the plan; `path` is relative to the plan's dest, `/`-separated. */
export interface PlannedPart {
  url: string;
  path: string;
  sha256?: string;
  size?: number;
  /** For this part's own origin only (the hub's or Civitai's endpoint), never for a CDN it redirects to. */
  accessToken?: string;
  /** Already complete in the cache: not fetched, not even asked about. */
  complete: boolean;
}

export interface ModelPlan {
  origin: ModelOrigin;
  /** The multi-file job's dest: the folder given, or the repo's cache folder. */
  dest: string;
  /** Where the user finds the files: the snapshot folder, or the dest folder. */
  downloadPath: string;
  parts: PlannedPart[];
  /** Cache mode: what to link as each blob completes, and the ref to write at the end. */
  snapshotPlan?: SnapshotPlan;
}

/**
 * Resolves the source and decides where each file goes. In cache mode, blobs already complete are linked into the
 * snapshot here (and the ref written when nothing is left to fetch), so a second identical run asks the hub only
 * for the listing. `listingFetch` makes the API requests (a queue passes one through its own dispatcher, so its
 * proxy and `ca` apply to them as to the files); default: the global fetch.
 */
export async function planModel(
  request: ModelDownloadRequest,
  env: Env = process.env,
  listingFetch?: typeof fetch,
): Promise<ModelPlan> {
  const { source } = request;
  if (typeof source !== "string") throw new InvalidArgumentError("source must be a string (hf://… or civitai://…).");
  if (request.dest !== undefined && (typeof request.dest !== "string" || request.dest.length === 0)) {
    throw new InvalidArgumentError("dest must be a non-empty path to a folder.");
  }
  if (request.dest !== undefined && request.cache !== undefined && request.cache !== false) {
    throw new InvalidArgumentError(
      "Give dest (a folder for the files) or cache (the Hugging Face cache root), not both.",
    );
  }
  for (const name of ["include", "exclude"] as const) {
    const patterns = request[name];
    if (patterns !== undefined && (!Array.isArray(patterns) || patterns.some((p) => typeof p !== "string"))) {
      throw new InvalidArgumentError(`${name} must be a list of patterns such as ["*.safetensors", "unet/*"].`);
    }
  }
  if (request.cache !== undefined && typeof request.cache !== "string" && typeof request.cache !== "boolean") {
    throw new InvalidArgumentError("cache must be a path to the Hugging Face cache root, or true.");
  }
  if (isHfSource(source)) return planHf(request, env, listingFetch);
  if (isModelSource(source, env)) return planCivitai(request, env, listingFetch);
  throw new InvalidArgumentError(
    `${JSON.stringify(source)} is not a model source: give hf://ORG/REPO[@REV][/PATH] or ` +
      "civitai://models/ID[@VERSION] (or use download() for a URL).",
  );
}

async function planHf(request: ModelDownloadRequest, env: Env, listingFetch?: typeof fetch): Promise<ModelPlan> {
  if (request.allFiles !== undefined) {
    throw new InvalidArgumentError("allFiles is for Civitai sources; an hf:// source takes include/exclude.");
  }
  const spec = parseHfSource(request.source);
  const endpoint = hfEndpoint(env);
  const accessToken = request.accessToken ?? hfToken(env);
  const resolved = await resolveHfSource(spec, {
    endpoint,
    token: accessToken,
    include: request.include,
    exclude: request.exclude,
    fetch: listingFetch,
  });
  const tokenFor = (url: string) => (sameOrigin(url, endpoint) ? accessToken : undefined);
  const source = formatHfSource(spec);

  if (request.dest !== undefined) {
    const dest = resolve(request.dest);
    return {
      origin: { source, commit: resolved.commit, snapshotPath: dest },
      dest,
      downloadPath: dest,
      parts: resolved.files.map((file) => ({
        url: file.url,
        path: file.path,
        ...(file.sha256 ? { sha256: file.sha256 } : {}),
        size: file.size,
        accessToken: tokenFor(file.url),
        complete: false,
      })),
    };
  }

  const root = typeof request.cache === "string" ? resolve(request.cache) : hfCacheRoot(env);
  const folder = await repoCacheFolder(root, spec.repoType, spec.repoId);
  const snapshot = snapshotPath(folder, resolved.commit);
  const plan: SnapshotPlan = { folder, revision: spec.revision, commit: resolved.commit, links: {} };
  const parts: PlannedPart[] = [];
  for (const file of resolved.files) {
    const paths = plan.links[file.blobId];
    if (paths) {
      paths.push(file.path);
      continue;
    }
    plan.links[file.blobId] = [file.path];
    blobPath(folder, file.blobId); // refuses a blob id that is not hex before it becomes a file name
    parts.push({
      url: file.url,
      path: `blobs/${file.blobId}`,
      ...(file.sha256 ? { sha256: file.sha256 } : {}),
      size: file.size,
      accessToken: tokenFor(file.url),
      complete: !request.overwrite && (await cachedBlob(folder, file.blobId, file.size)),
    });
  }
  for (const part of parts) if (part.complete) await linkBlob(plan, basename(part.path));
  if (parts.every((part) => part.complete)) await finishSnapshot(plan);
  return {
    origin: { source, commit: resolved.commit, snapshotPath: snapshot },
    dest: folder,
    downloadPath: snapshot,
    parts,
    snapshotPlan: plan,
  };
}

async function planCivitai(request: ModelDownloadRequest, env: Env, listingFetch?: typeof fetch): Promise<ModelPlan> {
  if (request.dest === undefined) {
    throw new InvalidArgumentError(
      "A Civitai source needs dest, the folder to put its files in (the Hugging Face cache holds hf:// repos only).",
    );
  }
  if (request.include?.length || request.exclude?.length) {
    throw new InvalidArgumentError("include/exclude are for hf:// sources; a Civitai source takes allFiles.");
  }
  const endpoint = civitaiEndpoint(env);
  const spec = parseCivitaiSource(request.source, endpoint);
  const token = request.accessToken ?? civitaiToken(env);
  const resolved = await resolveCivitaiSource(spec, {
    endpoint,
    token,
    allFiles: request.allFiles,
    fetch: listingFetch,
  });
  const dest = resolve(request.dest);
  return {
    origin: { source: `civitai://models/${resolved.modelId}@${resolved.versionId}` },
    dest,
    downloadPath: dest,
    parts: resolved.files.map((file, i) => ({
      url: file.url,
      path: sanitizeFileName(file.name) ?? `civitai-${resolved.versionId}-${i + 1}`,
      // sizeKB × 1024 is rounded from a float, so only the sha256 is held against the bytes.
      ...(file.sha256 ? { sha256: file.sha256 } : {}),
      accessToken: sameOrigin(file.url, endpoint) ? token : undefined,
      complete: false,
    })),
  };
}

/**
 * The token a part of a model job restored from a store gets: tokens are never stored, so it comes again from the
 * environment, and again only for the endpoint's own origin.
 */
export function modelPartToken(modelSource: string, partUrl: string, env: Env = process.env): string | undefined {
  try {
    if (isHfSource(modelSource)) return sameOrigin(partUrl, hfEndpoint(env)) ? hfToken(env) : undefined;
    if (isModelSource(modelSource, env)) {
      return sameOrigin(partUrl, civitaiEndpoint(env)) ? civitaiToken(env) : undefined;
    }
  } catch {
    // An environment that no longer parses gives no token; the hub then says what is missing.
  }
  return undefined;
}

function sameOrigin(url: string, endpoint: string): boolean {
  try {
    return new URL(url).origin === new URL(endpoint).origin;
  } catch {
    return false;
  }
}
