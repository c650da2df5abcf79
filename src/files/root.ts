/**
 * Every destination a network client names must stay inside the service's download root: a client may choose a
 * folder under it, never a path elsewhere on this machine, whether by an absolute path, by "..", or through a
 * symbolic link that points out of the root.
 */
import { lstat, mkdir, realpath, stat } from "node:fs/promises";
import { isAbsolute, join, relative, sep } from "node:path";
import { DlqError } from "../errors.js";
import { MAX_NAME_BYTES } from "./names.js";

export class DestinationOutsideRootError extends DlqError {
  constructor(message: string) {
    super(message, "DLQ_ERR_DEST_OUTSIDE_ROOT");
  }
}

/** A name the file system cannot hold: refused at submission rather than failing the job later (ENAMETOOLONG). */
export class NameTooLongError extends DlqError {
  constructor(message: string) {
    super(message, "DLQ_ERR_NAME_TOO_LONG");
  }
}

/** What Linux, macOS and Windows file systems allow for one name. */
const NAME_MAX_BYTES = 255;

/** Creates the root if needed and returns its real path, which every check below compares against. */
export async function prepareRoot(root: string): Promise<string> {
  await mkdir(root, { recursive: true });
  return realpath(root);
}

/**
 * The absolute path of `dest` under `root` (a real path from prepareRoot); "" is the root itself. A trailing "/"
 * is kept: to the queue it means "a folder to create". Throws DestinationOutsideRootError saying what to change.
 */
export async function resolveDest(root: string, dest: string): Promise<string> {
  if (dest === "") return root;
  const shown = JSON.stringify(dest);
  if (dest.includes("\0")) throw new DestinationOutsideRootError(`dest ${shown} contains a NUL character; remove it.`);
  if (isAbsolute(dest) || /^[a-zA-Z]:[\\/]/.test(dest)) {
    throw new DestinationOutsideRootError(
      `dest ${shown} is an absolute path; give a path relative to the download root (${root}), ` +
        'e.g. "models/sd", or "" for the root itself.',
    );
  }
  const segments = dest.split(sep === "/" ? "/" : /[\\/]/).filter((segment) => segment !== "" && segment !== ".");
  if (segments.includes("..")) {
    throw new DestinationOutsideRootError(
      `dest ${shown} contains "..", which could leave the download root; give a path inside it, e.g. "models/sd".`,
    );
  }
  for (const segment of segments) {
    const bytes = Buffer.byteLength(segment);
    if (bytes > NAME_MAX_BYTES) {
      throw new NameTooLongError(
        `dest ${shownName(dest)} has a name of ${bytes} bytes (${shownName(segment)}); file systems allow at most ` +
          `${NAME_MAX_BYTES} bytes (UTF-8) per folder or file name: shorten it.`,
      );
    }
  }
  const last = segments.at(-1);
  if (last !== undefined && !/[\\/]$/.test(dest) && Buffer.byteLength(last) > MAX_NAME_BYTES) {
    if (!(await isDirectory(join(root, dest)))) {
      throw new NameTooLongError(
        `dest ${shownName(dest)} names a file of ${Buffer.byteLength(last)} bytes (${shownName(last)}); a file name ` +
          `may have at most ${MAX_NAME_BYTES} bytes (UTF-8), to leave room for its partial file's suffix: ` +
          'shorten it, or end dest with "/" to make it a folder.',
      );
    }
  }
  // Walk the part of the path that exists: a link anywhere along it may point out of the root. What does not exist
  // yet will be created below the last existing folder, which by then is known to be inside.
  let current = root;
  for (const segment of segments) {
    current = join(current, segment);
    let isLink: boolean;
    try {
      isLink = (await lstat(current)).isSymbolicLink();
    } catch {
      break;
    }
    if (!isLink) continue;
    const shownLink = JSON.stringify(relative(root, current));
    let target: string;
    try {
      target = await realpath(current);
    } catch {
      throw new DestinationOutsideRootError(
        `dest ${shown} goes through ${shownLink}, a symbolic link whose target does not exist; ` +
          "remove the link or choose another folder.",
      );
    }
    if (!isInside(root, target)) {
      throw new DestinationOutsideRootError(
        `dest ${shown} goes through ${shownLink}, a symbolic link to ${target}, outside the download root; ` +
          "choose a folder inside the root.",
      );
    }
  }
  return join(root, dest);
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

/** A name for a message, its middle cut when long, so the message stays readable. */
function shownName(name: string): string {
  const chars = Array.from(name);
  return JSON.stringify(chars.length > 60 ? `${chars.slice(0, 28).join("")}…${chars.slice(-28).join("")}` : name);
}

function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === "" || (rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}
