import type { IncomingHttpHeaders } from "node:http";
import type { Validators } from "../files/sidecars.js";

/** A weak ETag cannot guard a byte range (RFC 9110 §13.1.5), so only a strong one goes into If-Range. */
function strongEtag(etag: string | undefined): string | undefined {
  return etag && !etag.startsWith("W/") ? etag : undefined;
}

/** The If-Range value that guards ranges of this file: a strong ETag, else Last-Modified. */
export function ifRangeFor(validators: Validators | undefined): string | undefined {
  return strongEtag(validators?.etag) ?? validators?.lastModified;
}

/** Headers that ask for the rest of a partial, and only if the server still has the file it was started from. */
export function resumeHeaders(offset: number, validators: Validators | undefined): Record<string, string> {
  if (offset === 0) return {};
  const ifRange = ifRangeFor(validators);
  return ifRange ? { range: `bytes=${offset}-`, "if-range": ifRange } : { range: `bytes=${offset}-` };
}

export function validatorsFrom(source: string, headers: IncomingHttpHeaders, totalBytes?: number): Validators {
  return {
    source,
    etag: header(headers, "etag"),
    lastModified: header(headers, "last-modified"),
    totalBytes,
  };
}

/**
 * What to do with a response to a (possibly ranged) request for a partial holding `offset` bytes.
 * - append: a 206 that continues exactly where the partial ends, for the same file
 * - restart: the body is the whole file (200), so the partial is overwritten from zero
 * - refetch: the server cannot continue this partial (other file now, or a bad range); drop it and ask again
 * - complete: 416 for a partial that already holds the whole file
 */
export type ResumePlan =
  | { action: "append"; totalBytes: number }
  | { action: "restart"; totalBytes: number | undefined }
  | { action: "refetch" }
  | { action: "complete"; totalBytes: number };

export function planResponse(
  status: number,
  headers: IncomingHttpHeaders,
  offset: number,
  previous: Validators | undefined,
): ResumePlan | undefined {
  if (status === 200) {
    const length = Number(header(headers, "content-length"));
    return { action: "restart", totalBytes: Number.isSafeInteger(length) ? length : undefined };
  }
  if (status === 206) {
    const range = parseContentRange(header(headers, "content-range"));
    if (!range || range.start !== offset || range.total === undefined) return { action: "refetch" };
    if (!sameFile(previous, headers, range.total)) return { action: "refetch" };
    return { action: "append", totalBytes: range.total };
  }
  if (status === 416 && offset > 0) {
    const total = parseContentRange(header(headers, "content-range"))?.total ?? previous?.totalBytes;
    return total === offset ? { action: "complete", totalBytes: total } : { action: "refetch" };
  }
  return undefined;
}

/** Servers that ignore If-Range would splice two files together; compare what we can see ourselves. */
function sameFile(previous: Validators | undefined, headers: IncomingHttpHeaders, total: number): boolean {
  if (!previous) return true;
  if (previous.totalBytes !== undefined && previous.totalBytes !== total) return false;
  const etag = header(headers, "etag");
  if (previous.etag && etag && previous.etag !== etag) return false;
  const lastModified = header(headers, "last-modified");
  return !(previous.lastModified && lastModified && previous.lastModified !== lastModified);
}

export function parseContentRange(value: string | undefined): { start: number; total?: number } | undefined {
  const match = value ? /^bytes\s+(?:(\d+)-\d+|\*)\/(\d+|\*)$/i.exec(value.trim()) : null;
  if (!match) return undefined;
  return {
    start: match[1] === undefined ? -1 : Number(match[1]),
    total: match[2] === "*" ? undefined : Number(match[2]),
  };
}

export function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}
