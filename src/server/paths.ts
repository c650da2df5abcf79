/**
 * Every destination a network client names must stay inside the service's download root: a client may choose a
 * folder under it, never a path elsewhere on this machine, whether by an absolute path, by "..", or through a
 * symbolic link that points out of the root.
 */
import { lstat, mkdir, realpath } from "node:fs/promises";
import { isAbsolute, join, relative, sep } from "node:path";
import { DlqError } from "../index.js";

export class DestinationOutsideRootError extends DlqError {
  constructor(message: string) {
    super(message, "DLQ_ERR_DEST_OUTSIDE_ROOT");
  }
}

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

function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === "" || (rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}
