/**
 * The Hugging Face cache, laid out exactly as huggingface_hub writes it (file_download.py), so that huggingface_hub,
 * `@huggingface/hub`, diffusers, transformers and InvokeAI find what dlqueue put there, offline:
 *
 *   <root>/models--ORG--REPO/
 *     blobs/<blobId>                 the bytes; blobId = sha256 for LFS files, the git blob id otherwise
 *     blobs/<blobId>.incomplete      a partial fetched over one connection (huggingface_hub resumes these too)
 *     blobs/<blobId>.downloading     a partial fetched over several: preallocated, with holes, so it must not carry
 *                                    the name huggingface_hub would take for a prefix; its sidecars say what is in
 *     snapshots/<commit>/<path>      relative symlink to ../../blobs/<blobId> (one more ../ per folder level)
 *     refs/<revision>                the commit sha, no newline
 *
 * Content addressing is what makes a blob shared by two revisions stored once, and a second run fetch nothing.
 */
import type { Stats } from "node:fs";
import { copyFile, lstat, mkdir, readFile, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { dirname, join, relative } from "node:path";
import { InvalidArgumentError, UnsafePathError } from "../errors.js";

// node:crypto (for temporary names) loads with the cache's first write: it costs 10 ms of every start otherwise.
const require = createRequire(import.meta.url);
const randomHex = (bytes: number): string =>
  (require("node:crypto") as typeof import("node:crypto")).randomBytes(bytes).toString("hex");

export type HfRepoType = "model" | "dataset" | "space";

type Env = Record<string, string | undefined>;

/**
 * Python's `os.path.expandvars(os.path.expanduser(value))`, which huggingface_hub applies to HF_HOME, HF_HUB_CACHE
 * and HF_TOKEN_PATH: a cache configured as `~/models` or `$SCRATCH/hf` must land where Python tools look.
 * Unknown variables stay as written, as in Python.
 */
export function expandPath(value: string, env: Env = process.env): string {
  const user = value === "~" || value.startsWith("~/") ? homedir() + value.slice(1) : value;
  return user.replace(/\$(\w+)|\$\{([^}]+)\}/g, (whole, bare: string | undefined, braced: string | undefined) => {
    const name = bare ?? braced ?? "";
    return env[name] ?? whole;
  });
}

/** An empty variable is taken as unset (Python would use "" as a relative path, which nobody means). */
function fromEnv(env: Env, name: string): string | undefined {
  const value = env[name];
  return value ? value : undefined;
}

/** $HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface (constants.py). */
export function hfHome(env: Env = process.env): string {
  const home =
    fromEnv(env, "HF_HOME") ?? join(fromEnv(env, "XDG_CACHE_HOME") ?? join(homedir(), ".cache"), "huggingface");
  return expandPath(home, env);
}

/**
 * $HF_HUB_CACHE, else the legacy $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub (constants.py). Tools that read the
 * cache resolve it the same way, so honouring every variable they honour is what makes the files findable.
 */
export function hfCacheRoot(env: Env = process.env): string {
  const root = fromEnv(env, "HF_HUB_CACHE") ?? fromEnv(env, "HUGGINGFACE_HUB_CACHE") ?? join(hfHome(env), "hub");
  return expandPath(root, env);
}

/** `<root>/models--ORG--REPO` (datasets--…, spaces--…), named by @huggingface/hub so both libraries agree. */
export async function repoCacheFolder(root: string, repoType: HfRepoType, repoId: string): Promise<string> {
  if (!/^[\w.-]+(\/[\w.-]+)?$/.test(repoId) || repoId.includes("..") || repoId.includes("--")) {
    throw new InvalidArgumentError(`Invalid repo id ${JSON.stringify(repoId)}: expected ORG/REPO.`);
  }
  // Loaded when a model is planned, not when the queue starts (see resolveHfSource).
  const { getRepoFolderName } = await import("@huggingface/hub");
  return join(root, getRepoFolderName({ type: repoType, name: repoId }));
}

// Blob ids and commits become file names: anything but hex would let a hostile listing write outside the cache.
const BLOB_ID = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;
const COMMIT = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

function checkBlobId(blobId: string): void {
  if (!BLOB_ID.test(blobId)) {
    throw new InvalidArgumentError(`Invalid blob id ${JSON.stringify(blobId)}: expected a git oid or a sha256 (hex).`);
  }
}

function checkCommit(commit: string): void {
  if (!COMMIT.test(commit)) {
    throw new InvalidArgumentError(`Invalid commit ${JSON.stringify(commit)}: expected a full commit sha (hex).`);
  }
}

/**
 * huggingface_hub's `_validate_relative_filename` (and @huggingface/hub's port): a repo path is joined onto the
 * snapshot folder, so `..`, absolute, drive and UNC paths are refused under both POSIX and Windows rules. Unlike a
 * normalizing check, `a/./b` or `a//b` are refused too: the snapshot path must be the repo path, byte for byte.
 */
export function checkRepoPath(path: string): void {
  const fail = (why: string) => {
    throw new UnsafePathError(path, why);
  };
  if (path.length === 0) fail("the path is empty");
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what is refused
  if (/[\u0000-\u001f\u007f]/.test(path)) fail("it contains control characters");
  const segments = path.replaceAll("\\", "/").split("/");
  if (segments.includes("..")) fail('it contains a ".." segment');
  if (segments.some((s) => s === "" || s === ".")) fail("it contains an empty or '.' segment");
  for (const part of [path, ...path.split("/")]) {
    if (part.startsWith("/") || part.startsWith("\\") || /^[a-zA-Z]:/.test(part)) {
      fail("absolute, drive-relative and UNC paths are not allowed");
    }
  }
}

export function blobPath(repoFolder: string, blobId: string): string {
  checkBlobId(blobId);
  return join(repoFolder, "blobs", blobId);
}

/** Where a blob grows while it downloads; huggingface_hub uses and resumes the same name. */
export function incompleteBlobPath(repoFolder: string, blobId: string): string {
  return `${blobPath(repoFolder, blobId)}.incomplete`;
}

/** `snapshots/<commit>` (the folder the CLI prints), or `snapshots/<commit>/<path>` for one file. */
export function snapshotPath(repoFolder: string, commit: string, path?: string): string {
  checkCommit(commit);
  if (path === undefined) return join(repoFolder, "snapshots", commit);
  checkRepoPath(path);
  return join(repoFolder, "snapshots", commit, ...path.split("/"));
}

const symlinkSupport = new Map<string, boolean>();

/** Errors that mean "this filesystem or OS will not make symlinks here", as opposed to "cannot write here at all". */
const NO_SYMLINKS = new Set(["EPERM", "ENOSYS", "ENOTSUP", "EOPNOTSUPP", "EINVAL", "EXDEV"]);

export interface LinkOptions {
  /**
   * false: copy the blob instead of linking (HF_HUB_DISABLE_SYMLINKS does the same). Default: link, falling back to a
   * copy where the filesystem refuses symlinks (Windows without developer mode, some network and FAT filesystems),
   * which is what huggingface_hub does.
   */
  symlinks?: boolean;
  env?: Env;
}

export interface LinkResult {
  /** The snapshot file: what to hand to the user, and what `downloadFileToCacheDir` returns for it. */
  path: string;
  mode: "symlink" | "copy";
}

/**
 * Points `snapshots/<commit>/<path>` at `blobs/<blobId>` with a relative symlink, so the cache survives being moved
 * (huggingface_hub switched to relative links for that, and because Windows handles them better).
 *
 * The new link is made under a temporary name and renamed over the old one, so a reader never sees the path missing
 * (huggingface_hub removes then links, which leaves a gap). The blob must be complete before this is called.
 */
export async function linkSnapshot(
  repoFolder: string,
  commit: string,
  path: string,
  blobId: string,
  options: LinkOptions = {},
): Promise<LinkResult> {
  const blob = blobPath(repoFolder, blobId);
  const target = snapshotPath(repoFolder, commit, path);
  const folder = dirname(target);
  await mkdir(folder, { recursive: true });
  const temp = join(folder, `.${randomHex(6)}.dlq-link`);
  const env = options.env ?? process.env;
  const wantLinks = options.symlinks ?? !isTrue(env.HF_HUB_DISABLE_SYMLINKS);

  if (wantLinks && symlinkSupport.get(folder) !== false) {
    try {
      await symlink(relative(folder, blob), temp);
      await replace(temp, target);
      return { path: target, mode: "symlink" };
    } catch (err) {
      await rm(temp, { force: true });
      if (!NO_SYMLINKS.has((err as NodeJS.ErrnoException).code ?? "")) throw err;
      symlinkSupport.set(folder, false);
    }
  }
  // A copy, never a move: another snapshot may already point at this blob.
  try {
    await copyFile(blob, temp);
    await replace(temp, target);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  return { path: target, mode: "copy" };
}

async function replace(temp: string, target: string): Promise<void> {
  try {
    await rename(temp, target);
  } catch (err) {
    // rename() cannot replace a directory; a folder where a file should be is a cache to fix by hand, not to delete.
    if ((err as NodeJS.ErrnoException).code === "EISDIR") {
      throw new UnsafePathError(target, "a folder is in the way of this snapshot file");
    }
    throw err;
  }
}

function isTrue(value: string | undefined): boolean {
  return ["1", "ON", "YES", "TRUE"].includes((value ?? "").toUpperCase());
}

/**
 * Records that `revision` (a branch or tag) pointed at `commit`, so offline tools can resolve `main`. Skipped when
 * the revision is the commit itself, as huggingface_hub does; rewritten only when it changed (a read-only shared
 * cache that is already right must not fail), and atomically so a reader never sees half a sha.
 */
export async function writeRef(repoFolder: string, revision: string, commit: string): Promise<void> {
  checkCommit(commit);
  if (revision === commit) return;
  checkRepoPath(revision); // refs/pr/1 is a nested file, like in git; nothing may climb out of refs/
  const ref = join(repoFolder, "refs", ...revision.split("/"));
  try {
    if ((await readFile(ref, "utf8")) === commit) return;
  } catch {
    // missing or unreadable: write it
  }
  await mkdir(dirname(ref), { recursive: true });
  const temp = `${ref}.${randomHex(4)}.tmp`;
  try {
    await writeFile(temp, commit);
    await rename(temp, ref);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}

/** The commit a ref points at in the cache, if it was written. */
export async function readRef(repoFolder: string, revision: string): Promise<string | undefined> {
  checkRepoPath(revision);
  try {
    const commit = await readFile(join(repoFolder, "refs", ...revision.split("/")), "utf8");
    return COMMIT.test(commit) ? commit : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether `blobs/<blobId>` is complete: a regular file of the expected size. The name is the content hash and blobs
 * are only ever renamed into place whole, so size is the check that costs nothing; hashing gigabytes on every run
 * would defeat "a second run fetches nothing".
 */
export async function cachedBlob(repoFolder: string, blobId: string, size: number): Promise<boolean> {
  let info: Stats;
  try {
    info = await lstat(blobPath(repoFolder, blobId));
  } catch {
    return false;
  }
  return info.isFile() && info.size === size;
}

/** Whether the snapshot file exists and leads (through its link, if any) to a file of the expected size. */
export async function cachedSnapshotFile(
  repoFolder: string,
  commit: string,
  path: string,
  size: number,
): Promise<boolean> {
  try {
    const info = await stat(snapshotPath(repoFolder, commit, path));
    return info.isFile() && info.size === size;
  } catch {
    return false;
  }
}

/**
 * A snapshot being filled by a queued job: which repo paths each blob becomes, so each path can be linked as soon
 * as its blob is complete, and the ref written once every one is. Kept in the job store, so a job restored after a
 * crash still links what it fetches.
 */
export interface SnapshotPlan {
  folder: string;
  revision: string;
  commit: string;
  /** blobId → the repo paths with that content (two paths, one blob: one transfer, both linked). */
  links: Record<string, string[]>;
}

/** Links every snapshot path of a blob that is now complete. */
export async function linkBlob(plan: SnapshotPlan, blobId: string): Promise<void> {
  for (const path of plan.links[blobId] ?? []) await linkSnapshot(plan.folder, plan.commit, path, blobId);
}

/** Every blob is linked: the revision may now point at the commit (huggingface_hub writes the ref last too). */
export async function finishSnapshot(plan: SnapshotPlan): Promise<void> {
  await writeRef(plan.folder, plan.revision, plan.commit);
}
