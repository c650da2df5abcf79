/**
 * `hf://` sources: parsing as huggingface_hub's HfFileSystem spells them, and resolution into one commit and the
 * list of files to fetch, with the hashes the hub publishes for them.
 *
 * Resolution pins the revision to a commit sha first so that every part of a repo comes from one commit even if
 * someone pushes to `main` while a 20 GB download runs; the file URLs use that sha, never the branch name.
 * Listing goes through @huggingface/hub (its pagination and LFS metadata); the bytes are dlqueue's business.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { ListFileEntry, PathInfo } from "@huggingface/hub";
import { HttpError, InvalidArgumentError } from "../errors.js";
import { checkRepoPath, expandPath, type HfRepoType, hfHome } from "../files/hf-cache.js";
import { apiFetch, endpointFromEnv, readJson } from "./api.js";
import {
  BadApiResponseError,
  HubAccessError,
  type HubMissing,
  HubNotFoundError,
  InvalidSourceError,
  NoMatchingFilesError,
} from "./errors.js";

export type { HfRepoType } from "../files/hf-cache.js";

type Env = Record<string, string | undefined>;

export const HF_PROTOCOL = "hf://";
export const DEFAULT_HF_ENDPOINT = "https://huggingface.co";

export interface HfSource {
  repoType: HfRepoType;
  /** ORG/REPO */
  repoId: string;
  /** Branch, tag or commit; "main" when the source names none. */
  revision: string;
  /** A file or folder inside the repo; absent for the whole repo. */
  path?: string;
}

const EXPECTED = "hf://[datasets/|spaces/]ORG/REPO[@REVISION][/PATH]";

const TYPE_PREFIXES: Record<string, HfRepoType | "unsupported"> = {
  models: "model",
  datasets: "dataset",
  spaces: "space",
  kernels: "unsupported",
  buckets: "unsupported",
};
const SINGULAR: Record<string, string> = {
  model: "models",
  dataset: "datasets",
  space: "spaces",
  kernel: "kernels",
  bucket: "buckets",
};

/** Revisions with a `/` that the parser takes whole (pull requests, parquet conversions), as _hf_uris.py does. */
const SPECIAL_REF = /^refs\/(?:convert\/[\w.-]+|pr\/\d+)/;
/** huggingface_hub's REPO_ID_REGEX (validate_repo_id), ASCII only. */
const REPO_ID = /^\b[\w.-]+\b\/\b[\w.-]{1,96}\b$/;

export function isHfSource(source: string): boolean {
  return source.startsWith(HF_PROTOCOL);
}

/**
 * `hf://ORG/REPO[@REV][/PATH]`, with an optional `models/`, `datasets/` or `spaces/` prefix, parsed as
 * huggingface_hub's `parse_hf_uri` (the parser behind HfFileSystem) does:
 * - an `@` only counts right after ORG/REPO (`file@1.txt` deeper in the path is a file name);
 * - `refs/pr/N` and `refs/convert/NAME` are taken whole; any other revision ends at the first `/`, so a branch
 *   named `feature/x` is written `feature%2Fx` (the revision is percent-decoded, the path is not);
 * - single-segment ids (`hf://gpt2`) are refused, as huggingface_hub now does: they are ambiguous with a namespace.
 */
export function parseHfSource(source: string): HfSource {
  const fail = (why: string): never => {
    throw new InvalidSourceError(source, why, EXPECTED, "DLQ_ERR_HF_SOURCE_INVALID");
  };
  if (!isHfSource(source)) fail(`it does not start with ${HF_PROTOCOL}`);
  let body = source.slice(HF_PROTOCOL.length);
  if (!body) fail("nothing follows hf://");

  let repoType: HfRepoType = "model";
  const first = body.split("/", 1)[0] ?? "";
  const typed = TYPE_PREFIXES[first];
  if (typed === "unsupported") fail(`dlqueue downloads models, datasets and spaces, not ${first}`);
  if (typed && !body.includes("/")) fail(`no repository follows "${first}"`);
  if (typed) {
    repoType = typed as HfRepoType;
    body = body.slice(first.length + 1);
  } else if (SINGULAR[first] && body.includes("/")) {
    fail(`the type prefix is plural: write ${HF_PROTOCOL}${SINGULAR[first]}/…`);
  }

  const location = body.replace(/^\/+|\/+$/g, "");
  if (!location) fail("the repository id is missing");
  const at = location.indexOf("@");
  let repoId: string;
  let revision = "main";
  let path: string;
  if (at === -1 || (location.slice(0, at).match(/\//g)?.length ?? 0) > 1) {
    const parts = location.split("/");
    if (parts.length < 2) fail(`the repository id must be ORG/REPO, got "${location}"`);
    repoId = `${parts[0]}/${parts[1]}`;
    path = parts.slice(2).join("/");
  } else {
    repoId = location.slice(0, at);
    const rest = location.slice(at + 1);
    const special = SPECIAL_REF.exec(rest)?.[0];
    const raw = special ?? (rest.includes("/") ? rest.slice(0, rest.indexOf("/")) : rest);
    path = rest.slice(raw.length).replace(/^\//, "");
    try {
      revision = decodeURIComponent(raw);
    } catch {
      fail(`the revision "${raw}" is not valid percent-encoding`);
    }
    if (!revision) fail("the revision after @ is empty");
  }
  if (repoId.split("/").length !== 2) fail(`the repository id must be ORG/REPO, got "${repoId}"`);
  if (!REPO_ID.test(repoId)) {
    fail(`"${repoId}" is not a repository id (letters, digits, "-", "_" and "." only, up to 96 per name)`);
  }
  if (repoId.includes("--") || repoId.includes("..")) fail(`"${repoId}" contains "--" or ".."`);
  if (repoId.endsWith(".git")) fail(`"${repoId}" ends with ".git"`);
  if (path.includes("//")) fail(`the path "${path}" has an empty segment`);
  if (path) {
    try {
      checkRepoPath(path);
    } catch (err) {
      fail((err as Error).message);
    }
  }
  return path ? { repoType, repoId, revision, path } : { repoType, repoId, revision };
}

/** The canonical spelling (what a job records): a `/` in a plain branch name becomes `%2F`, as huggingface_hub writes. */
export function formatHfSource(spec: HfSource): string {
  const prefix = spec.repoType === "model" ? "" : `${SINGULAR[spec.repoType]}/`;
  const revision =
    spec.revision === "main"
      ? ""
      : `@${spec.revision.includes("/") && !isSpecialRef(spec.revision) ? spec.revision.replaceAll("/", "%2F") : spec.revision}`;
  return `${HF_PROTOCOL}${prefix}${spec.repoId}${revision}${spec.path ? `/${spec.path}` : ""}`;
}

function isSpecialRef(revision: string): boolean {
  return SPECIAL_REF.exec(revision)?.[0] === revision;
}

/** HF_ENDPOINT as huggingface_hub reads it: default https://huggingface.co, trailing slashes dropped. */
export function hfEndpoint(env: Env = process.env): string {
  return endpointFromEnv(env, "HF_ENDPOINT", DEFAULT_HF_ENDPOINT);
}

/** Tokens as huggingface_hub's `_clean_token` leaves them: no CR/LF anywhere, trimmed, empty = none. */
function cleanToken(token: string | undefined): string | undefined {
  return token?.replace(/[\r\n]/g, "").trim() || undefined;
}

/**
 * HF_TOKEN (or the legacy HUGGING_FACE_HUB_TOKEN), else the file `hf auth login` writes: HF_TOKEN_PATH, else
 * $HF_HOME/token. The value is returned, never logged or put in an error message.
 */
export function hfToken(env: Env = process.env): string | undefined {
  const fromEnv = cleanToken(env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN);
  if (fromEnv) return fromEnv;
  const file = expandPath(env.HF_TOKEN_PATH || join(hfHome(env), "token"), env);
  try {
    return cleanToken(readFileSync(file, "utf8"));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    throw new InvalidArgumentError(
      `Cannot read the Hugging Face token file ${file} (${code}): fix it or set HF_TOKEN.`,
    );
  }
}

/** `""`, `datasets/` or `spaces/`: where a repo lives in the hub's web and resolve URLs. */
export function repoUrlPrefix(repoType: HfRepoType): string {
  return repoType === "model" ? "" : `${SINGULAR[repoType]}/`;
}

/** The hub's own page for a repo: where a gated model's license is accepted. */
export function repoPageUrl(endpoint: string, repoType: HfRepoType, repoId: string): string {
  return `${endpoint}/${repoUrlPrefix(repoType)}${repoId}`;
}

/** `{endpoint}/{prefix}{repo}/resolve/{revision}/{path}`, each path segment percent-encoded (hf_hub_url). */
export function resolveUrl(endpoint: string, repoType: HfRepoType, repoId: string, revision: string, path: string) {
  const encoded = path.split("/").map(encodeURIComponent).join("/");
  return `${endpoint}/${repoUrlPrefix(repoType)}${repoId}/resolve/${encodeURIComponent(revision)}/${encoded}`;
}

/**
 * fnmatch.fnmatchcase's pattern, translated as Python's `fnmatch.translate` does: `*` matches anything including
 * `/` (unlike a shell), `?` one character, `[...]`/`[!...]` a set; case-sensitive everywhere.
 */
export function fnmatchRegExp(pattern: string): RegExp {
  let out = "";
  let lastStar = false;
  let i = 0;
  while (i < pattern.length) {
    const c = pattern[i++] as string;
    if (c === "*") {
      if (!lastStar) out += ".*";
      lastStar = true;
      continue;
    }
    lastStar = false;
    if (c === "?") out += ".";
    else if (c === "[") {
      let j = i;
      if (pattern[j] === "!") j++;
      if (pattern[j] === "]") j++;
      while (j < pattern.length && pattern[j] !== "]") j++;
      if (j >= pattern.length) {
        out += "\\[";
        continue;
      }
      let set = pattern.slice(i, j);
      i = j + 1;
      const negate = set.startsWith("!");
      if (negate) set = set.slice(1);
      if (set === "" && negate) {
        out += ".";
        continue;
      }
      const body = set.replace(/[\\\][^]/g, "\\$&");
      const cls = `[${negate ? "^" : ""}${body}]`;
      try {
        new RegExp(cls);
        out += cls;
      } catch {
        out += "(?!)"; // a reversed range such as [z-a]: Python drops it and the set matches nothing
      }
    } else out += c.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");
  }
  return new RegExp(`^(?:${out})$`, "s");
}

function compilePatterns(patterns: readonly string[] | undefined): RegExp[] | undefined {
  // An empty list is taken as "no filter" (Python's [] would match nothing): the CLI and REST pass [] when unset.
  if (!patterns || patterns.length === 0) return undefined;
  return patterns.map((p) => {
    const normalized = p.replaceAll("\\", "/");
    return fnmatchRegExp(normalized.endsWith("/") ? `${normalized}*` : normalized);
  });
}

/**
 * huggingface_hub's `filter_repo_objects`: kept when it matches an include pattern (if any are given) and no exclude
 * pattern. Matching is on the full path in the repo; a pattern ending in `/` means "everything under this folder".
 */
export function repoPathFilter(include?: readonly string[], exclude?: readonly string[]): (path: string) => boolean {
  const allow = compilePatterns(include);
  const deny = compilePatterns(exclude);
  return (path) => {
    const p = path.replaceAll("\\", "/");
    if (allow && !allow.some((re) => re.test(p))) return false;
    return !deny?.some((re) => re.test(p));
  };
}

export interface HfResolvedFile {
  /** Path in the repo, `/`-separated: the path under the snapshot or the `-d` folder. */
  path: string;
  size: number;
  /** The LFS object id: the sha256 of the content, to check while streaming. Absent for small git files. */
  sha256?: string;
  /** The cache blob's name, as huggingface_hub picks it: the LFS sha256, else the git blob id. */
  blobId: string;
  /** The resolve URL at the pinned commit; LFS files redirect from there to a CDN that must not get the token. */
  url: string;
}

export interface HfResolved extends HfSource {
  endpoint: string;
  /** The commit every file comes from. */
  commit: string;
  files: HfResolvedFile[];
}

export interface ResolveHfOptions {
  /** Default: hfEndpoint(). */
  endpoint?: string;
  /** Sent to the endpoint's origin only. Default: none (pass hfToken() to use the user's login). */
  token?: string;
  include?: readonly string[];
  exclude?: readonly string[];
  /** For proxies and tests; requests to any origin but the endpoint's never carry the token whatever this does. */
  fetch?: typeof fetch;
}

interface RevisionInfo {
  sha?: unknown;
  gated?: unknown;
}

/**
 * Resolves a source to one commit and the files to fetch, before anything is written:
 * 1. GET /api/{type}s/{repo}/revision/{rev} → the commit sha (and whether the repo is gated);
 * 2. the file or folder at PATH (paths-info), or the whole tree, listed recursively at that commit;
 * 3. include/exclude applied; an empty result is an error;
 * 4. for a gated repo, one HEAD of a file's resolve URL, because the hub shows a gated repo's listing to anyone and
 *    refuses only the bytes: better to say "accept the license" now than after the job is queued.
 */
export async function resolveHfSource(spec: HfSource, options: ResolveHfOptions = {}): Promise<HfResolved> {
  const endpoint = (options.endpoint ?? hfEndpoint()).replace(/\/+$/, "");
  const { token } = options;
  const hubFetch = guardedFetch(endpoint, token, spec, apiFetch(options.fetch));
  const repo = { type: spec.repoType, name: spec.repoId };
  // @huggingface/hub refuses tokens without the hf_ prefix (checkCredentials); mirrors issue others, so those go in
  // through the guarded fetch instead, which adds the header for the endpoint's origin only.
  const credentials = token?.startsWith("hf_") ? { accessToken: token } : {};

  const infoUrl = `${endpoint}/api/${spec.repoType}s/${spec.repoId}/revision/${encodeURIComponent(spec.revision)}`;
  const infoResponse = await hubFetch(infoUrl, { headers: { accept: "application/json" } });
  const info = (await readJson(infoResponse, infoUrl)) as RevisionInfo;
  const commit = info.sha;
  if (typeof commit !== "string" || !/^[0-9a-f]{40}$/.test(commit)) {
    throw new BadApiResponseError(infoUrl, "no commit sha");
  }

  // Loaded here, not at start-up: every `dlqueue get` of a plain URL would otherwise pay for the hub's library.
  const { listFiles, pathsInfo } = await import("@huggingface/hub");
  let entries: Array<ListFileEntry | PathInfo> = [];
  // expand=false: expanding makes the hub compute each file's last commit, with pages 20× smaller; nothing here uses it.
  const listing = (path?: string) =>
    listFiles({
      repo,
      revision: commit,
      recursive: true,
      expand: false,
      // listFiles puts the path into the URL as is; encoding it keeps `#`, `?` and `%` in file names intact.
      ...(path ? { path: path.split("/").map(encodeURIComponent).join("/") } : {}),
      hubUrl: endpoint,
      fetch: hubFetch,
      ...credentials,
    });
  if (spec.path) {
    const found = await pathsInfo({
      repo,
      paths: [spec.path],
      revision: commit,
      hubUrl: endpoint,
      fetch: hubFetch,
      ...credentials,
    });
    const entry = found.find((e) => e.path === spec.path);
    if (!entry) throw notFound("path", spec, endpoint);
    if (entry.type === "directory") for await (const e of listing(spec.path)) entries.push(e);
    else entries = [entry];
  } else {
    for await (const e of listing()) entries.push(e);
  }

  const keep = repoPathFilter(options.include, options.exclude);
  const files: HfResolvedFile[] = [];
  for (const entry of entries) {
    if (entry.type !== "file" || !keep(entry.path)) continue;
    checkRepoPath(entry.path);
    const sha256 = entry.lfs?.oid;
    const blobId = sha256 ?? entry.oid;
    if (!blobId)
      throw new BadApiResponseError(`${endpoint}/api/${spec.repoType}s/${spec.repoId}`, `no oid for ${entry.path}`);
    files.push({
      path: entry.path,
      size: entry.lfs?.size ?? entry.size,
      ...(sha256 ? { sha256 } : {}),
      blobId,
      url: resolveUrl(endpoint, spec.repoType, spec.repoId, commit, entry.path),
    });
  }
  files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  if (files.length === 0) throw noFiles(spec, options);

  if (info.gated) {
    const probe = files[0] as HfResolvedFile;
    // manual: a 302 to the CDN already proves access; following it would fetch bytes for nothing.
    await hubFetch(probe.url, { method: "HEAD", redirect: "manual" });
  }
  return { ...spec, endpoint, commit, files };
}

function describe(spec: HfSource): string {
  const kind = spec.repoType === "model" ? "Model" : spec.repoType === "dataset" ? "Dataset" : "Space";
  return `${kind} ${spec.repoId}`;
}

function notFound(missing: HubMissing, spec: HfSource, endpoint: string, tokenSent = false): HubNotFoundError {
  const where = ` on ${endpoint}`;
  switch (missing) {
    case "repo":
      return new HubNotFoundError(
        "repo",
        `${describe(spec)} was not found${where}. Check the id and the type (datasets/, spaces/); if it is private, ` +
          (tokenSent
            ? "the token in HF_TOKEN cannot read it: use a token of an account that can."
            : `set HF_TOKEN to a token that can read it (for a gated one, first accept its license at ` +
              `${repoPageUrl(endpoint, spec.repoType, spec.repoId)}).`),
      );
    case "revision":
      return new HubNotFoundError(
        "revision",
        `${describe(spec)} has no revision "${spec.revision}"${where}: give an existing branch, tag or commit.`,
      );
    case "path":
      return new HubNotFoundError(
        "path",
        `${describe(spec)} has no file or folder "${spec.path ?? ""}" at revision "${spec.revision}": check the path.`,
      );
  }
}

function noFiles(spec: HfSource, options: ResolveHfOptions): NoMatchingFilesError {
  const filters = [
    ...(options.include?.length ? [`include ${options.include.map((p) => JSON.stringify(p)).join(", ")}`] : []),
    ...(options.exclude?.length ? [`exclude ${options.exclude.map((p) => JSON.stringify(p)).join(", ")}`] : []),
  ];
  const where = spec.path ? `"${spec.path}" in ${describe(spec)}` : describe(spec);
  return new NoMatchingFilesError(
    filters.length
      ? `No file of ${where} at "${spec.revision}" matches ${filters.join(" and ")}: loosen the patterns ` +
          '(they match the whole path in the repo, and "*" crosses folders).'
      : `${where} at "${spec.revision}" has no files.`,
  );
}

/**
 * Maps a hub error response onto dlqueue's errors using the hub's X-Error-Code, the way huggingface_hub's
 * hf_raise_for_status does. Also for the wiring: a resolve URL answering 401/403 at download time means the same.
 * A 401 without a code on a repo URL is taken as "not found or private", as huggingface_hub does: the hub answers
 * 401 for repos it will not admit exist.
 */
export function hubErrorFromResponse(
  response: Pick<Response, "status" | "statusText" | "headers">,
  url: string,
  spec: HfSource,
  endpoint: string,
  tokenSent: boolean,
): Error {
  const code = response.headers.get("x-error-code");
  const status = response.status;
  if (code === "RevisionNotFound") return notFound("revision", spec, endpoint);
  if (code === "EntryNotFound") return notFound("path", spec, endpoint);
  const page = repoPageUrl(endpoint, spec.repoType, spec.repoId);
  if (code === "GatedRepo") {
    return new HubAccessError(
      tokenSent
        ? `${describe(spec)} is gated and the token in HF_TOKEN has no access yet: accept its license at ${page} ` +
            "while logged in as the token's account (access may await the authors' approval), then retry."
        : `${describe(spec)} is gated: accept its license at ${page} while logged in, then set HF_TOKEN to an access ` +
            "token of that account (https://huggingface.co/settings/tokens) and retry.",
      status,
    );
  }
  if (code === "RepoNotFound" || (status === 401 && !tokenSent)) return notFound("repo", spec, endpoint, tokenSent);
  if (status === 401 || status === 403) {
    return new HubAccessError(
      `${describe(spec)} refused access (HTTP ${status}): if it is gated, accept its license at ${page}; ` +
        (tokenSent
          ? "check that the token in HF_TOKEN is valid and can read it."
          : "set HF_TOKEN to an access token that can read it."),
      status,
    );
  }
  if (status === 404) return notFound(spec.path ? "path" : "repo", spec, endpoint, tokenSent);
  return new HttpError(status, response.statusText || "Error", url);
}

/**
 * The fetch every hub request goes through: adds the token for the endpoint's origin and strips it for any other
 * (a pagination link or redirect pointing elsewhere must not receive it), and turns error answers into dlqueue's
 * errors here, where the X-Error-Code header is still at hand (@huggingface/hub's HubApiError drops headers).
 */
function guardedFetch(endpoint: string, token: string | undefined, spec: HfSource, base: typeof fetch): typeof fetch {
  const origin = new URL(endpoint).origin;
  return async (input, init) => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    const headers = new Headers(init?.headers);
    const sameOrigin = new URL(url).origin === origin;
    if (!sameOrigin) headers.delete("authorization");
    else if (token && !headers.has("authorization")) headers.set("authorization", `Bearer ${token}`);
    const response = await base(url, { ...init, headers });
    if (response.ok || (init?.redirect === "manual" && response.status >= 300 && response.status < 400)) {
      return response;
    }
    await response.body?.cancel();
    throw hubErrorFromResponse(response, url, spec, endpoint, sameOrigin && token !== undefined);
  };
}
