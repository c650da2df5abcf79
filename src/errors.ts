import { formatBytes } from "./units.js";

/**
 * Every error dlqueue raises or records carries a stable `code` (like undici's `UND_ERR_*`) so callers can branch
 * on it, and an `errorType`: the short label InvokeAI puts in a job's `error_type` (e.g. `HTTPError(Not Found)`).
 */
export class DlqError extends Error {
  readonly code: string;

  constructor(message: string, code = "DLQ_ERR_GENERIC", options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }

  /** The `error_type` a job shows when this error ends it. */
  get errorType(): string {
    return this.name;
  }

  /** Transient errors are retried with backoff, resuming from the bytes already on disk. */
  get retryable(): boolean {
    return false;
  }
}

export class InvalidUrlError extends DlqError {
  constructor(source: string) {
    super(`Invalid URL ${JSON.stringify(source)}: give an absolute http:// or https:// URL.`, "DLQ_ERR_INVALID_URL");
  }
}

export class UnsupportedSchemeError extends DlqError {
  constructor(protocol: string) {
    super(
      `Unsupported URL scheme "${protocol}": dlqueue downloads only http:// and https:// URLs.`,
      "DLQ_ERR_UNSUPPORTED_SCHEME",
    );
  }
}

export class InvalidArgumentError extends DlqError {
  constructor(message: string) {
    super(message, "DLQ_ERR_INVALID_ARGUMENT");
  }
}

export class UnknownJobIdError extends DlqError {
  constructor(id: number) {
    super(`No job with id ${id} in this queue (it may have been pruned).`, "DLQ_ERR_UNKNOWN_JOB_ID");
  }
}

export class TimeoutError extends DlqError {
  constructor(what: string, ms: number) {
    super(`${what} did not finish within ${ms} ms.`, "DLQ_ERR_TIMEOUT");
  }
}

export class QueueStoppedError extends DlqError {
  constructor() {
    super("This queue has been stopped; create a new DownloadQueue to download more.", "DLQ_ERR_QUEUE_STOPPED");
  }
}

/** A response status that ends or interrupts the transfer. 408, 429 and 5xx are retried; other 4xx are final. */
export class HttpError extends DlqError {
  readonly status: number;
  readonly reason: string;
  /** Milliseconds the server asked us to wait (Retry-After), if it said. */
  readonly retryAfterMs: number | undefined;

  constructor(status: number, reason: string, url: string, retryAfterMs?: number) {
    super(`${url} answered HTTP ${status} ${reason}${hintForStatus(status)}`, "DLQ_ERR_HTTP", undefined);
    this.name = "HTTPError";
    this.status = status;
    this.reason = reason;
    this.retryAfterMs = retryAfterMs;
  }

  override get errorType(): string {
    return `HTTPError(${this.reason})`;
  }

  override get retryable(): boolean {
    return this.status === 408 || this.status === 429 || this.status >= 500;
  }
}

function hintForStatus(status: number): string {
  if (status === 401 || status === 403) return ": the server refused access; pass an access token for this host.";
  if (status === 404 || status === 410) return ": check the URL.";
  if (status === 429) return ": the server is rate-limiting; try again later.";
  if (status >= 500) return ": the server failed; trying again later may help.";
  return ".";
}

/** The connection dropped, stalled, or ended before the promised length: resume from what is on disk. */
export class TransferInterruptedError extends DlqError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, "DLQ_ERR_INTERRUPTED", options);
  }

  override get retryable(): boolean {
    return true;
  }
}

export class TooManyRedirectsError extends DlqError {
  constructor(url: string, max: number) {
    super(`${url} redirected more than ${max} times; the server may be misconfigured.`, "DLQ_ERR_TOO_MANY_REDIRECTS");
  }
}

export class ResponseTooLargeError extends DlqError {
  constructor(url: string, expected: number, got: number) {
    super(
      `${url} sent ${got} bytes or more but the job expected ${expected}; the download was stopped and discarded. ` +
        "Check the URL or the expected size.",
      "DLQ_ERR_RESPONSE_TOO_LARGE",
    );
  }
}

export class SizeMismatchError extends DlqError {
  constructor(url: string, expected: number, got: number) {
    super(`${url} gave ${got} bytes but ${expected} were expected; the file was discarded.`, "DLQ_ERR_SIZE_MISMATCH");
  }

  override get errorType(): string {
    return "SizeMismatch";
  }
}

export class ChecksumMismatchError extends DlqError {
  constructor(path: string, expected: string, actual: string) {
    super(
      `sha256 of ${path} is ${actual} but ${expected} was expected; the file was discarded. ` +
        "The server sent different content than expected: check the URL and the checksum.",
      "DLQ_ERR_CHECKSUM_MISMATCH",
    );
  }

  override get errorType(): string {
    return "ChecksumMismatch";
  }
}

export class InsufficientDiskSpaceError extends DlqError {
  /**
   * `available` is what the filesystem reports free; `reserved` the part of it already promised to this queue's
   * other running downloads on the same filesystem.
   */
  constructor(dir: string, needed: number, available: number, reserved = 0) {
    const free = Math.max(0, available - reserved);
    const promised =
      reserved > 0
        ? ` (of ${formatBytes(available)} free, ${formatBytes(reserved)} are for downloads already running)`
        : "";
    super(
      `Not enough free space in ${dir}: ${formatBytes(needed)} needed, ${formatBytes(free)} free${promised}. ` +
        "Free some space and retry; nothing was written.",
      "DLQ_ERR_INSUFFICIENT_DISK_SPACE",
    );
  }

  override get errorType(): string {
    return "InsufficientDiskSpace";
  }
}

/** The destination cannot be written: a missing permission, a file where a folder should be, a full disk. */
export class DestinationError extends DlqError {
  constructor(message: string, code: "DLQ_ERR_DEST_UNWRITABLE" | "DLQ_ERR_DISK_FULL", options?: ErrorOptions) {
    super(message, code, options);
  }

  override get errorType(): string {
    return this.code === "DLQ_ERR_DISK_FULL" ? "DiskFull" : "DestinationUnwritable";
  }
}

/** A relative path (multi-file part) or a server-supplied file name that would land outside `dest`. */
export class UnsafePathError extends DlqError {
  constructor(path: string, why: string) {
    super(`Refusing path ${JSON.stringify(path)}: ${why}. Give a relative path inside dest.`, "DLQ_ERR_UNSAFE_PATH");
  }
}

export class FileLockedError extends DlqError {
  /** `heldBy`: another host's lock, which only a person can tell is stale: who holds it and the way out. */
  constructor(path: string, heldBy?: { host: string; pid: number; lockPath: string }) {
    super(
      heldBy
        ? `${path} is being downloaded by process ${heldBy.pid} on host ${heldBy.host} (${heldBy.host}:${heldBy.pid} ` +
            `holds its lock). Wait for it to finish or stop that download; if that host is gone, delete ` +
            `${heldBy.lockPath} and run the download again.`
        : `${path} is being downloaded by another queue or process (its lock file is held). ` +
            "Wait for it to finish or stop the other download.",
      "DLQ_ERR_FILE_LOCKED",
    );
  }
}

/** A proxy would not open a tunnel to the origin (undici's ProxyAgent reports its status only in a message). */
export class ProxyError extends DlqError {
  readonly status: number;

  constructor(status: number, options?: ErrorOptions) {
    const hint =
      status === 407
        ? "the proxy wants credentials: give them in the proxy URL (http://user:pass@host:port)"
        : status >= 500
          ? "the proxy could not reach the server; retrying later may help"
          : "check the proxy URL, or NO_PROXY for hosts that must be reached directly";
    super(`The proxy answered HTTP ${status} instead of connecting: ${hint}.`, "DLQ_ERR_PROXY", options);
    this.status = status;
  }

  override get retryable(): boolean {
    return this.status >= 500;
  }
}

/**
 * The server's TLS certificate was refused: not signed by a CA this process trusts, expired, or for another name.
 * Permanent: another try meets the same certificate, so it is never retried.
 */
export class TlsCertificateError extends DlqError {
  /** OpenSSL's verification code (`SELF_SIGNED_CERT_IN_CHAIN`) or Node's (`ERR_TLS_CERT_ALTNAME_INVALID`). */
  readonly reason: string;

  constructor(reason: string, detail: string, options?: ErrorOptions) {
    super(`${certificateProblem(reason, detail)}.`, "DLQ_ERR_TLS_CERTIFICATE", options);
    this.reason = reason;
  }
}

/** OpenSSL's codes for a chain that ends at no CA this process trusts: the one case a `ca` option fixes. */
const UNTRUSTED_CERTIFICATE = new Set([
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_UNTRUSTED",
]);
/** The rest of OpenSSL's verification failures (Node's tls documentation lists them): the certificate itself is bad. */
const REFUSED_CERTIFICATE = new Set([
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "HOSTNAME_MISMATCH",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "CERT_SIGNATURE_FAILURE",
  "CERT_REVOKED",
  "CERT_REJECTED",
  "INVALID_CA",
  "INVALID_PURPOSE",
  "PATH_LENGTH_EXCEEDED",
  "CERT_CHAIN_TOO_LONG",
  "UNABLE_TO_DECRYPT_CERT_SIGNATURE",
  "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
  "ERROR_IN_CERT_NOT_BEFORE_FIELD",
  "ERROR_IN_CERT_NOT_AFTER_FIELD",
]);

function certificateProblem(reason: string, detail: string): string {
  if (UNTRUSTED_CERTIFICATE.has(reason)) {
    return (
      `The server's certificate is not trusted (${reason}: ${detail}): pass its CA with --ca-certificate FILE ` +
      "(library: the `ca` option) or NODE_EXTRA_CA_CERTS"
    );
  }
  if (reason === "CERT_HAS_EXPIRED" || reason === "CERT_NOT_YET_VALID") {
    return (
      `The server's certificate is not valid now (${reason}: ${detail}): check this machine's clock; if it is ` +
      "right, the server's operator must renew the certificate"
    );
  }
  if (reason === "ERR_TLS_CERT_ALTNAME_INVALID" || reason === "HOSTNAME_MISMATCH") {
    return (
      `The server's certificate is for another host name (${reason}: ${detail}): check the URL's host, or ` +
      "whether a proxy answers in the server's place"
    );
  }
  return `The server's certificate was refused (${reason}: ${detail}): the server's operator must fix its certificate`;
}

const PROXY_REFUSAL = /^Proxy response \((\d{3})\) !== 200/;

/** Translate filesystem errors into something that names the path and says what to do. */
export function fsError(err: unknown, path: string): Error {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === "ENOSPC" || code === "EDQUOT") {
    return new DestinationError(`The disk holding ${path} is full; free some space and retry.`, "DLQ_ERR_DISK_FULL", {
      cause: err,
    });
  }
  if (code === "EACCES" || code === "EPERM" || code === "EROFS" || code === "ENOTDIR" || code === "EISDIR") {
    return new DestinationError(
      `Cannot write ${path} (${code}): choose a destination you can write to.`,
      "DLQ_ERR_DEST_UNWRITABLE",
      { cause: err },
    );
  }
  return err instanceof Error ? err : new Error(String(err));
}

/** Network-level failures worth another try; anything else (a bad host name, a TLS error) fails at once. */
const TRANSIENT_ERRNO = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "EAI_AGAIN",
]);
const NON_TRANSIENT_UNDICI = new Set(["UND_ERR_ABORTED", "UND_ERR_INVALID_ARG", "UND_ERR_NOT_SUPPORTED"]);

/** Maps whatever a transfer threw onto dlqueue's errors, deciding what is worth retrying. */
export function classifyFailure(err: unknown, path: string): Error {
  if (err instanceof DlqError) return err;
  const proxyStatus = PROXY_REFUSAL.exec((err as Error | undefined)?.message ?? "")?.[1];
  if (proxyStatus) return new ProxyError(Number(proxyStatus), { cause: err });
  const certificate = certificateFailure(err);
  if (certificate) return certificate;
  const code = (err as { code?: string } | undefined)?.code;
  if (code && (code.startsWith("UND_ERR_") ? !NON_TRANSIENT_UNDICI.has(code) : TRANSIENT_ERRNO.has(code))) {
    return new TransferInterruptedError(`The connection failed (${code}: ${(err as Error).message})`, {
      cause: err,
    });
  }
  return fsError(err, path);
}

/** A refused certificate behind `fetch`'s "fetch failed" TypeError (its cause) or on its own; else undefined. */
export function tlsFailure(err: unknown): TlsCertificateError | undefined {
  return certificateFailure(err) ?? certificateFailure((err as Error | undefined)?.cause);
}

/**
 * A refused certificate, as Node reports it (a verification code on a plain Error), or as undici's ProxyAgent does
 * when it is the https proxy's own name that does not match (UND_ERR_PRX_TLS, which would otherwise be retried).
 */
function certificateFailure(err: unknown): TlsCertificateError | undefined {
  const tlsError = (err as { code?: string } | undefined)?.code === "UND_ERR_PRX_TLS" ? (err as Error).cause : err;
  const code = (tlsError as { code?: string } | undefined)?.code;
  if (code === undefined || !(UNTRUSTED_CERTIFICATE.has(code) || REFUSED_CERTIFICATE.has(code))) return undefined;
  return new TlsCertificateError(code, (tlsError as Error).message, { cause: err });
}

/** The shared queue's Redis cannot be reached; what is already queued stays in Redis. */
export class RedisUnavailableError extends DlqError {
  constructor(where: string, cause?: unknown) {
    super(
      `Redis at ${where} cannot be reached (${cause instanceof Error ? cause.message : String(cause ?? "no connection")}): ` +
        "start it or check the --redis URL; jobs already queued are kept in Redis and go on once it is back.",
      "DLQ_ERR_REDIS_UNAVAILABLE",
      { cause },
    );
  }
}

/**
 * A per-job token or credential header on the shared queue without a shared secret: it would sit in Redis in
 * clear, so it is refused.
 */
export class SecretRequiredError extends DlqError {
  constructor(what: string) {
    super(
      `${what} cannot be queued on a shared queue without a shared secret: it would be stored in Redis in clear. ` +
        "Set DLQUEUE_SECRET (the same value on every API node and worker) to store it encrypted, or give workers " +
        "their tokens (HF_TOKEN, CIVITAI_TOKEN, the tokens option) instead.",
      "DLQ_ERR_SECRET_REQUIRED",
    );
  }
}
