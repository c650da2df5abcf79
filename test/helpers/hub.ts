/**
 * A stand-in Hugging Face hub on 127.0.0.1, answering as the real one does for what dlqueue and @huggingface/hub
 * ask of it, so `hf://` sources are tested against real sockets:
 *
 *   GET  /api/{models|datasets|spaces}/{repo}[/revision/{rev}][?blobs=true]   info with `sha`, `siblings`, `gated`
 *   GET  /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=…&expand=…       paged with Link: <…>; rel="next"
 *   POST /api/{type}s/{repo}/paths-info/{rev}                               JSON or form body {paths, expand}
 *   GET|HEAD /[datasets/|spaces/]{repo}/resolve/{rev}/{path}                 X-Repo-Commit, ETag; LFS files answer
 *        302 to a CDN on another origin with X-Linked-Etag / X-Linked-Size (like cdn-lfs.hf.co)
 *
 * Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) and X-Error-Message as the hub
 * sends them: an unknown or private repo is 401 without a token and 404 with one; a gated repo shows its listing to
 * anyone and refuses only file bytes (401 without a token, 403 with one not granted).
 *
 * Every request is recorded with its origin and Authorization header, so tests can prove a token never reaches the
 * CDN. Repos are git-like: commits hold whole trees, branches and tags point at commits, a new commit on `main` can
 * change one file while the others keep their blob ids.
 */
import { createHash, randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createTlsServer } from "node:https";
import type { AddressInfo } from "node:net";

export type HubRepoType = "model" | "dataset" | "space";
export type FileContent = Buffer | string;
export interface HubFileSpec {
  content: FileContent;
  /** Stored with Git LFS (sha256 published, bytes on the CDN). Default: by extension or size, as .gitattributes do. */
  lfs?: boolean;
}

export interface HubRequest {
  origin: "hub" | "cdn";
  method: string;
  /** Path and query as received. */
  url: string;
  authorization: string | undefined;
  range: string | undefined;
  at: number;
}

export interface HubFile {
  path: string;
  content: Buffer;
  size: number;
  lfs: boolean;
  sha256: string;
  /** Git blob id of what git stores: the content, or the LFS pointer for LFS files. */
  oid: string;
  /** What huggingface_hub names the cache blob: sha256 for LFS, else the git oid. */
  blobId: string;
  pointerSize: number;
}

interface Commit {
  sha: string;
  title: string;
  date: string;
  files: Map<string, HubFile>;
}

const LFS_EXTENSIONS = /\.(safetensors|bin|ckpt|pt|pth|onnx|gguf|msgpack|h5|npz|zip|parquet)$/;
const DEFAULT_LFS_THRESHOLD = 10 * 1024;

function sha1(data: Buffer | string): string {
  return createHash("sha1").update(data).digest("hex");
}

export function sha256Hex(data: Buffer | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/** `git hash-object`: what the hub reports as a file's oid. */
export function gitBlobId(content: Buffer): string {
  return sha1(Buffer.concat([Buffer.from(`blob ${content.length}\0`), content]));
}

export class HubRepo {
  readonly commits = new Map<string, Commit>();
  readonly branches = new Map<string, string>();
  readonly tags = new Map<string, string>();
  /** Tokens that may read it (private) or have accepted its license (gated). */
  readonly granted = new Set<string>();
  private count = 0;

  constructor(
    readonly hub: StandInHub,
    readonly type: HubRepoType,
    readonly id: string,
    public gated: false | "auto" | "manual",
    public isPrivate: boolean,
    private readonly lfsThreshold: number,
  ) {}

  /** Commits a change set on a branch (default main): a FileContent adds or replaces, null deletes. Returns the sha. */
  commit(changes: Record<string, FileContent | HubFileSpec | null>, options: { branch?: string; title?: string } = {}) {
    const branch = options.branch ?? "main";
    const parent = this.branches.get(branch);
    const files = new Map(parent ? this.commits.get(parent)?.files : undefined);
    for (const [path, change] of Object.entries(changes)) {
      if (change === null) files.delete(path);
      else files.set(path, this.makeFile(path, change));
    }
    this.count++;
    const title = options.title ?? `commit ${this.count}`;
    const sha = sha1(
      `${this.type}/${this.id}\n${parent ?? ""}\n${title}\n${this.count}\n${[...files.keys()].join("\n")}`,
    );
    const date = new Date(Date.UTC(2025, 0, 1) + this.count * 86_400_000).toISOString();
    this.commits.set(sha, { sha, title, date, files });
    this.branches.set(branch, sha);
    for (const file of files.values()) if (file.lfs) this.hub.blobs.set(file.sha256, file.content);
    return sha;
  }

  private makeFile(path: string, change: FileContent | HubFileSpec): HubFile {
    const spec = typeof change === "string" || Buffer.isBuffer(change) ? { content: change } : change;
    const content = Buffer.isBuffer(spec.content) ? spec.content : Buffer.from(spec.content);
    const lfs = spec.lfs ?? (LFS_EXTENSIONS.test(path) || content.length >= this.lfsThreshold);
    const sha256 = sha256Hex(content);
    const pointer = Buffer.from(
      `version https://git-lfs.github.com/spec/v1\noid sha256:${sha256}\nsize ${content.length}\n`,
    );
    const oid = gitBlobId(lfs ? pointer : content);
    return {
      path,
      content,
      size: content.length,
      lfs,
      sha256,
      oid,
      blobId: lfs ? sha256 : oid,
      pointerSize: pointer.length,
    };
  }

  head(branch = "main"): string {
    const sha = this.branches.get(branch);
    if (!sha) throw new Error(`no branch ${branch}`);
    return sha;
  }

  branch(name: string, from = this.head()): void {
    this.branches.set(name, from);
  }

  tag(name: string, sha = this.head()): void {
    this.tags.set(name, sha);
  }

  grant(token: string): void {
    this.granted.add(token);
  }

  /** A branch, a tag or a full commit sha, as the hub accepts them. */
  resolve(revision: string): Commit | undefined {
    const sha = this.branches.get(revision) ?? this.tags.get(revision) ?? revision;
    return this.commits.get(sha);
  }

  file(path: string, revision = "main"): HubFile | undefined {
    return this.resolve(revision)?.files.get(path);
  }

  files(revision = "main"): HubFile[] {
    return [...(this.resolve(revision)?.files.values() ?? [])].sort((a, b) => (a.path < b.path ? -1 : 1));
  }

  /** `""`, `datasets/` or `spaces/`. */
  get prefix(): string {
    return this.type === "model" ? "" : `${this.type}s/`;
  }
}

export interface HubOptions {
  /** Tree entries per page; small so tests cross page boundaries (the real hub pages at 1000, 50 when expanded). */
  pageSize?: number;
  /** Files at least this large go to LFS unless the spec says otherwise. */
  lfsThreshold?: number;
  /** Serve the hub's API over https with this certificate (the CDN stays http), as a mirror behind a company CA. */
  tls?: { key: Buffer; cert: Buffer };
}

export interface RepoOptions {
  type?: HubRepoType;
  gated?: false | "auto" | "manual";
  private?: boolean;
  /** The first commit on main. */
  files?: Record<string, FileContent | HubFileSpec>;
}

export class StandInHub {
  url = "";
  cdnUrl = "";
  readonly requests: HubRequest[] = [];
  readonly repos = new Map<string, HubRepo>();
  /** sha256 → content, what the CDN serves. */
  readonly blobs = new Map<string, Buffer>();
  /** sha256 → byte offsets the CDN flips before sending. */
  readonly corruptions = new Map<string, number[]>();
  /** Bytes per second per CDN response; undefined: as fast as the socket goes. */
  cdnBytesPerSec: number | undefined;
  pageSize: number;
  readonly lfsThreshold: number;
  private servers: Server[] = [];
  private readonly tls: HubOptions["tls"];

  constructor(options: HubOptions = {}) {
    this.pageSize = options.pageSize ?? 3;
    this.lfsThreshold = options.lfsThreshold ?? DEFAULT_LFS_THRESHOLD;
    this.tls = options.tls;
  }

  repo(id: string, options: RepoOptions = {}): HubRepo {
    const type = options.type ?? "model";
    const repo = new HubRepo(this, type, id, options.gated ?? false, options.private ?? false, this.lfsThreshold);
    this.repos.set(`${type}/${id}`, repo);
    if (options.files) repo.commit(options.files, { title: "initial commit" });
    return repo;
  }

  hubRequests(): HubRequest[] {
    return this.requests.filter((r) => r.origin === "hub");
  }

  cdnRequests(): HubRequest[] {
    return this.requests.filter((r) => r.origin === "cdn");
  }

  /** Requests for file bodies (resolve GETs and CDN GETs): what "a second run fetches nothing" counts. */
  bodyRequests(): HubRequest[] {
    return this.requests.filter((r) => r.method === "GET" && (r.origin === "cdn" || r.url.includes("/resolve/")));
  }

  resetRequests(): void {
    this.requests.length = 0;
  }

  /** Flip one byte of what the CDN sends for this blob (the stored content stays right, so its sha256 does too). */
  corrupt(sha256: string, offset = 0): void {
    this.corruptions.set(sha256, [...(this.corruptions.get(sha256) ?? []), offset]);
  }

  async start(): Promise<this> {
    const onHub = (req: IncomingMessage, res: ServerResponse) =>
      this.record("hub", req, res, () => this.handleHub(req, res));
    const hub = this.tls ? createTlsServer(this.tls, onHub) : createServer(onHub);
    const cdn = createServer((req, res) => this.record("cdn", req, res, () => this.handleCdn(req, res)));
    this.servers = [hub, cdn];
    this.url = (await listen(hub)).replace(/^http:/, this.tls ? "https:" : "http:");
    this.cdnUrl = await listen(cdn);
    return this;
  }

  async close(): Promise<void> {
    await Promise.all(
      this.servers.map(
        (server) =>
          new Promise<void>((resolve) => {
            server.closeAllConnections();
            server.close(() => resolve());
          }),
      ),
    );
  }

  private record(origin: "hub" | "cdn", req: IncomingMessage, res: ServerResponse, handle: () => Promise<void>): void {
    this.requests.push({
      origin,
      method: req.method ?? "GET",
      url: req.url ?? "/",
      authorization: req.headers.authorization,
      range: req.headers.range,
      at: Date.now(),
    });
    handle().catch((err: unknown) => {
      if (!res.headersSent) sendJson(res, 500, { error: String(err) });
      else res.destroy();
    });
  }

  private token(req: IncomingMessage): string | undefined {
    const match = /^Bearer (.+)$/i.exec(req.headers.authorization ?? "");
    return match?.[1];
  }

  /** null when allowed; else the error the hub answers with. */
  private refusal(repo: HubRepo | undefined, req: IncomingMessage, forFile: boolean): HubError | null {
    const token = this.token(req);
    if (!repo || (repo.isPrivate && !(token && repo.granted.has(token)))) {
      // The hub does not admit that a private repo exists: same answer as for a missing one.
      return token
        ? { status: 404, code: "RepoNotFound", message: "Repository not found" }
        : { status: 401, code: "RepoNotFound", message: "Invalid username or password." };
    }
    if (forFile && repo.gated && !(token && repo.granted.has(token))) {
      const kind = repo.type;
      return token
        ? {
            status: 403,
            code: "GatedRepo",
            message: `Access to ${kind} ${repo.id} is restricted and you are not in the authorized list. Visit ${this.url}/${repo.prefix}${repo.id} to ask for access.`,
          }
        : {
            status: 401,
            code: "GatedRepo",
            message: `Access to ${kind} ${repo.id} is restricted. You must have access to it and be authenticated to access it. Please log in.`,
          };
    }
    return null;
  }

  private async handleHub(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", this.url);
    const segments = url.pathname.split("/").slice(1);
    if (segments[0] === "api" && ["models", "datasets", "spaces"].includes(segments[1] ?? "")) {
      const type = (segments[1] as string).slice(0, -1) as HubRepoType;
      const repoId = `${segments[2]}/${segments[3]}`;
      const repo = this.repos.get(`${type}/${repoId}`);
      const refused = this.refusal(repo, req, false);
      if (refused) return sendError(res, refused);
      const action = segments[4];
      const rest = segments.slice(5);
      if (action === undefined || action === "revision") {
        const revision = action === undefined ? "main" : rest.map(decodeURIComponent).join("/");
        return this.info(res, repo as HubRepo, revision, url.searchParams.get("blobs") === "true");
      }
      if (action === "tree" && req.method === "GET") return this.tree(res, repo as HubRepo, rest, url);
      if (action === "paths-info" && req.method === "POST") {
        return this.pathsInfo(req, res, repo as HubRepo, rest.map(decodeURIComponent).join("/"));
      }
      return sendJson(res, 404, { error: "Not found" });
    }
    const resolveAt = segments.indexOf("resolve");
    if (resolveAt === 2 || (resolveAt === 3 && (segments[0] === "datasets" || segments[0] === "spaces"))) {
      const type: HubRepoType = resolveAt === 2 ? "model" : segments[0] === "datasets" ? "dataset" : "space";
      const repoId = segments.slice(resolveAt - 2, resolveAt).join("/");
      return this.resolveFile(req, res, this.repos.get(`${type}/${repoId}`), segments.slice(resolveAt + 1));
    }
    return sendJson(res, 404, { error: "Not found" });
  }

  private info(res: ServerResponse, repo: HubRepo, revision: string, blobs: boolean): void {
    const commit = repo.resolve(revision);
    if (!commit) {
      sendError(res, { status: 404, code: "RevisionNotFound", message: `Invalid rev id: ${revision}` });
      return;
    }
    const [author] = repo.id.split("/");
    sendJson(res, 200, {
      _id: sha1(repo.id).slice(0, 24),
      id: repo.id,
      ...(repo.type === "model" ? { modelId: repo.id } : {}),
      author,
      sha: commit.sha,
      lastModified: commit.date,
      private: repo.isPrivate,
      disabled: false,
      gated: repo.gated,
      downloads: 0,
      likes: 0,
      tags: [],
      createdAt: "2025-01-01T00:00:00.000Z",
      siblings: [...commit.files.values()]
        .sort((a, b) => (a.path < b.path ? -1 : 1))
        .map((f) =>
          blobs
            ? {
                rfilename: f.path,
                size: f.size,
                blobId: f.oid,
                ...(f.lfs ? { lfs: { sha256: f.sha256, size: f.size, pointerSize: f.pointerSize } } : {}),
              }
            : { rfilename: f.path },
        ),
    });
  }

  /** Splits `{rev}/{path…}` as the hub does: `refs/pr/N` and `refs/convert/NAME` are one revision. */
  private splitRevision(rest: string[]): { revision: string; path: string } {
    const take = rest[0] === "refs" && (rest[1] === "pr" || rest[1] === "convert") ? 3 : 1;
    return {
      revision: rest.slice(0, take).map(decodeURIComponent).join("/"),
      path: rest.slice(take).map(decodeURIComponent).join("/"),
    };
  }

  private entries(commit: Commit, expand: boolean): Map<string, Record<string, unknown>> {
    const out = new Map<string, Record<string, unknown>>();
    for (const file of commit.files.values()) {
      const parts = file.path.split("/");
      for (let i = 1; i < parts.length; i++) {
        const dir = parts.slice(0, i).join("/");
        if (!out.has(dir))
          out.set(dir, { type: "directory", oid: sha1(`tree ${commit.sha} ${dir}`), size: 0, path: dir });
      }
      out.set(file.path, {
        type: "file",
        oid: file.oid,
        size: file.size,
        path: file.path,
        ...(file.lfs ? { lfs: { oid: file.sha256, size: file.size, pointerSize: file.pointerSize } } : {}),
        ...(expand
          ? {
              lastCommit: { id: commit.sha, title: commit.title, date: commit.date },
              securityFileStatus: { status: "safe" },
            }
          : {}),
      });
    }
    return out;
  }

  private tree(res: ServerResponse, repo: HubRepo, rest: string[], url: URL): void {
    const { revision, path } = this.splitRevision(rest);
    const commit = repo.resolve(revision);
    if (!commit) {
      sendError(res, { status: 404, code: "RevisionNotFound", message: `Invalid rev id: ${revision}` });
      return;
    }
    const recursive = url.searchParams.get("recursive") === "true" || url.searchParams.get("recursive") === "1";
    const expand = url.searchParams.get("expand") === "true" || url.searchParams.get("expand") === "1";
    const all = this.entries(commit, expand);
    if (path && all.get(path)?.type !== "directory") {
      sendError(res, { status: 404, code: "EntryNotFound", message: `${path} does not exist on "${revision}"` });
      return;
    }
    const base = path ? `${path}/` : "";
    const listed = [...all.values()]
      .filter((e) => {
        const p = e.path as string;
        if (!p.startsWith(base)) return false;
        return recursive || !p.slice(base.length).includes("/");
      })
      .sort((a, b) => ((a.path as string) < (b.path as string) ? -1 : 1));
    const start = Number(url.searchParams.get("cursor") ?? "0");
    const page = listed.slice(start, start + this.pageSize);
    const headers: Record<string, string> = {};
    if (start + this.pageSize < listed.length) {
      const next = new URL(url.pathname, this.url);
      next.searchParams.set("recursive", String(recursive));
      next.searchParams.set("expand", String(expand));
      next.searchParams.set("cursor", String(start + this.pageSize));
      headers.Link = `<${next.href}>; rel="next"`;
    }
    sendJson(res, 200, page, headers);
  }

  private async pathsInfo(req: IncomingMessage, res: ServerResponse, repo: HubRepo, revision: string): Promise<void> {
    const commit = repo.resolve(revision);
    if (!commit)
      return sendError(res, { status: 404, code: "RevisionNotFound", message: `Invalid rev id: ${revision}` });
    const raw = (await readBody(req)).toString();
    let paths: string[];
    let expand: boolean;
    if ((req.headers["content-type"] ?? "").startsWith("application/json")) {
      const body = JSON.parse(raw) as { paths?: string[]; expand?: boolean };
      paths = body.paths ?? [];
      expand = body.expand === true;
    } else {
      const form = new URLSearchParams(raw); // huggingface_hub posts a form
      paths = form.getAll("paths");
      expand = form.get("expand") === "True" || form.get("expand") === "true";
    }
    const all = this.entries(commit, expand);
    // Paths that do not exist are left out, not reported: an empty array is how the hub says "no such path".
    sendJson(
      res,
      200,
      paths.flatMap((p) => {
        const entry = all.get(p.replace(/\/+$/, ""));
        return entry ? [entry] : [];
      }),
    );
  }

  private async resolveFile(
    req: IncomingMessage,
    res: ServerResponse,
    repo: HubRepo | undefined,
    rest: string[],
  ): Promise<void> {
    if (req.method !== "GET" && req.method !== "HEAD") return sendJson(res, 405, { error: "Method not allowed" });
    const refused = this.refusal(repo, req, true);
    if (refused) return sendError(res, refused);
    const { revision, path } = this.splitRevision(rest);
    const commit = (repo as HubRepo).resolve(revision);
    if (!commit)
      return sendError(res, { status: 404, code: "RevisionNotFound", message: `Invalid rev id: ${revision}` });
    const file = commit.files.get(path);
    const commitHeader = { "X-Repo-Commit": commit.sha };
    if (!file) {
      return sendError(res, { status: 404, code: "EntryNotFound", message: "Entry not found" }, commitHeader);
    }
    const disposition = `inline; filename*=UTF-8''${encodeURIComponent(path.split("/").pop() ?? path)}`;
    if (file.lfs) {
      const signature = randomBytes(8).toString("hex");
      const location = `${this.cdnUrl}/repos/${file.sha256.slice(0, 2)}/${file.sha256.slice(2, 4)}/${file.sha256}?X-Amz-Signature=${signature}&response-content-disposition=${encodeURIComponent(disposition)}`;
      const body = `Found. Redirecting to ${location}`;
      res.writeHead(302, {
        ...commitHeader,
        Location: location,
        ETag: `"${file.oid}"`,
        "X-Linked-Etag": `"${file.sha256}"`,
        "X-Linked-Size": String(file.size),
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Length": String(Buffer.byteLength(body)),
      });
      res.end(req.method === "HEAD" ? undefined : body);
      return;
    }
    await serveBytes(req, res, file.content, {
      ...commitHeader,
      ETag: `"${file.oid}"`,
      "Content-Disposition": disposition,
    });
  }

  private async handleCdn(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", this.cdnUrl);
    const sha = /^\/repos\/[0-9a-f]{2}\/[0-9a-f]{2}\/([0-9a-f]{64})$/.exec(url.pathname)?.[1];
    const stored = sha ? this.blobs.get(sha) : undefined;
    if (!sha || !stored || !url.searchParams.get("X-Amz-Signature")) {
      res.writeHead(403, { "Content-Type": "application/xml" });
      res.end("<Error><Code>AccessDenied</Code></Error>");
      return;
    }
    let content = stored;
    const flips = this.corruptions.get(sha);
    if (flips) {
      content = Buffer.from(stored);
      for (const at of flips) if (at < content.length) content[at] = (content[at] as number) ^ 0xff;
    }
    const disposition = url.searchParams.get("response-content-disposition");
    await serveBytes(
      req,
      res,
      content,
      { ETag: `"${sha}"`, ...(disposition ? { "Content-Disposition": disposition } : {}) },
      this.cdnBytesPerSec,
    );
  }
}

interface HubError {
  status: number;
  code: string;
  message: string;
}

function sendError(res: ServerResponse, error: HubError, headers: Record<string, string> = {}): void {
  sendJson(
    res,
    error.status,
    { error: error.message },
    {
      ...headers,
      "X-Error-Code": error.code,
      "X-Error-Message": error.message,
    },
  );
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    "Content-Type": "application/json; charset=utf-8",
    "Content-Length": String(Buffer.byteLength(text)),
  });
  res.end(res.req.method === "HEAD" ? undefined : text);
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Sends bytes with Range support (206, 416 with `bytes *\/size`), optionally paced. */
export async function serveBytes(
  req: IncomingMessage,
  res: ServerResponse,
  content: Buffer,
  headers: Record<string, string>,
  bytesPerSec?: number,
): Promise<void> {
  const size = content.length;
  let start = 0;
  let end = size - 1;
  let status = 200;
  const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? "");
  if (range && (range[1] || range[2])) {
    if (range[1]) {
      start = Number(range[1]);
      end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
    } else {
      start = Math.max(0, size - Number(range[2]));
    }
    if (start >= size || start > end) {
      res.writeHead(416, { "Content-Range": `bytes */${size}`, "Content-Length": "0" });
      res.end();
      return;
    }
    status = 206;
  }
  const length = end - start + 1;
  res.writeHead(status, {
    ...headers,
    "Content-Type": "application/octet-stream",
    "Accept-Ranges": "bytes",
    "Content-Length": String(length),
    ...(status === 206 ? { "Content-Range": `bytes ${start}-${end}/${size}` } : {}),
  });
  if (req.method === "HEAD") {
    res.end();
    return;
  }
  const body = content.subarray(start, end + 1);
  if (!bytesPerSec) {
    res.end(body);
    return;
  }
  const slice = Math.max(1, Math.min(16 * 1024, Math.floor(bytesPerSec / 20)));
  for (let pos = 0; pos < body.length && !res.destroyed; pos += slice) {
    const chunk = body.subarray(pos, pos + slice);
    if (!res.write(chunk)) await new Promise((resolve) => res.once("drain", resolve));
    await new Promise((resolve) => setTimeout(resolve, (chunk.length / bytesPerSec) * 1000));
  }
  res.end();
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

export async function startHub(options: HubOptions = {}): Promise<StandInHub> {
  return new StandInHub(options).start();
}
