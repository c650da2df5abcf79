import { isAbsolute, posix, win32 } from "node:path";
import contentDisposition from "content-disposition";
import { UnsafePathError } from "../errors.js";

/**
 * Most filesystems cap a name at 255 bytes; a file's own name keeps a margin for its partial's suffixes
 * (`.downloading.segments.json`, `.downloading-<pid>-<n>`). Names from a server are cut to it; the service refuses
 * longer ones.
 */
export const MAX_NAME_BYTES = 200;
const FALLBACK_NAME = "download";
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/;
// Controls, path separators, and characters Windows forbids, so a name is safe on every OS we run on.
const UNSAFE_CHARS = new RegExp(`${CONTROL_CHARS.source.slice(0, -1)}/\\\\<>:"|?*]`, "g");
const WINDOWS_RESERVED = /^(con|prn|aux|nul|com\d|lpt\d)(\..*)?$/i;

/**
 * The file name a response asks for: `Content-Disposition` (RFC 6266, `filename*` preferred), else the last segment
 * of the URL's path (so `x.png?raw=true` gives `x.png`). Always a single safe path component.
 */
export function fileNameFor(source: string, dispositionHeader: string | undefined): string {
  const fromHeader = dispositionHeader ? nameFromDisposition(dispositionHeader) : undefined;
  if (fromHeader) {
    const safe = sanitizeFileName(fromHeader);
    if (safe) return safe;
  }
  return sanitizeFileName(nameFromUrl(source)) ?? FALLBACK_NAME;
}

function nameFromDisposition(header: string): string | undefined {
  try {
    return contentDisposition.parse(header).parameters.filename;
  } catch {
    // Servers often send unquoted names with spaces, which RFC 6266 forbids; take what they meant.
    const match = /filename\*?\s*=\s*(?:UTF-8'[^']*')?("?)([^";]+)\1/i.exec(header);
    if (!match?.[2]) return undefined;
    try {
      return decodeURIComponent(match[2].trim());
    } catch {
      return match[2].trim();
    }
  }
}

function nameFromUrl(source: string): string {
  const segments = new URL(source).pathname.split("/").filter(Boolean);
  const last = segments.at(-1) ?? "";
  try {
    return decodeURIComponent(last);
  } catch {
    return last;
  }
}

/**
 * Reduce a name a server chose to one harmless path component: only its last component is kept (`../../x` → `x`,
 * `/etc/passwd` → `passwd`), unsafe characters become `_`, leading dots are dropped so it is neither hidden nor
 * `..`, and it is cut to a length every filesystem accepts. Returns undefined when nothing usable is left.
 */
export function sanitizeFileName(name: string): string | undefined {
  const lastComponent = name.split(/[/\\]/).filter(Boolean).at(-1) ?? "";
  let safe = lastComponent
    .normalize("NFC")
    .replace(UNSAFE_CHARS, "_")
    .replace(/^[.\s]+/, "")
    .replace(/[.\s]+$/, "");
  if (WINDOWS_RESERVED.test(safe)) safe = `_${safe}`;
  safe = truncateUtf8(safe, MAX_NAME_BYTES);
  return /[^_]/.test(safe) ? safe : undefined;
}

function truncateUtf8(name: string, maxBytes: number): string {
  if (Buffer.byteLength(name) <= maxBytes) return name;
  const dot = name.lastIndexOf(".");
  const ext = dot > 0 && name.length - dot <= 16 ? name.slice(dot) : "";
  let stem = name.slice(0, name.length - ext.length);
  while (Buffer.byteLength(stem + ext) > maxBytes) stem = Array.from(stem).slice(0, -1).join("");
  return stem + ext;
}

/**
 * Check a caller-supplied relative path (a multi-file part) before anything is fetched: it must stay inside dest.
 * Returns it normalized with `/` separators.
 */
export function checkRelativePath(relative: string): string {
  if (relative.length === 0) throw new UnsafePathError(relative, "the path is empty");
  if (isAbsolute(relative) || win32.isAbsolute(relative) || /^[a-z]:/i.test(relative)) {
    throw new UnsafePathError(relative, "absolute paths are not allowed");
  }
  if (CONTROL_CHARS.test(relative)) throw new UnsafePathError(relative, "it contains control characters");
  const normalized = posix.normalize(relative.replaceAll("\\", "/"));
  if (normalized === ".." || normalized.startsWith("../") || normalized === "." || normalized.endsWith("/")) {
    throw new UnsafePathError(relative, "it leaves the destination folder or names no file");
  }
  return normalized;
}
