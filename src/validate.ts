/**
 * Checks of what callers pass in, and the defaults that fill what they leave out. Every error here is thrown before
 * anything is queued or fetched.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import type { SecureContext } from "node:tls";
import type { Dispatcher } from "undici";
import { InvalidArgumentError, InvalidUrlError, UnsupportedSchemeError } from "./errors.js";
import { checkRelativePath } from "./files/names.js";
import { SpaceLedger } from "./files/space.js";
import { defaultLogger, type Logger } from "./logger.js";
import type {
  DownloadQueueOptions,
  DownloadRequest,
  EventBus,
  JobOptions,
  MultiFileDownloadRequest,
} from "./options.js";
import type { TransferSettings } from "./transfer/http.js";
import { type RateLimiter, rateLimiter } from "./transfer/rate.js";
import { EnvHttpProxyAgent, ProxyAgent } from "./transfer/undici.js";
import { VERSION } from "./version.js";

// node:tls and node:crypto load only for a queue given `ca`: node:tls alone costs 12 ms at every start.
const require = createRequire(import.meta.url);

export interface TokenPattern {
  pattern: RegExp;
  token: string;
}

/** The options with their defaults filled in, ready to run transfers with. */
export interface ResolvedOptions {
  maxParallelDownloads: number;
  eventBus: EventBus | undefined;
  tokens: readonly TokenPattern[];
  logger: Logger;
  progressIntervalMs: number;
  /** The queue's own rate limit, shared by all its transfers. */
  limiter: RateLimiter | undefined;
  overwrite: boolean;
  settings: TransferSettings;
  /** The dispatcher made here because none was given: whoever resolved the options closes it. */
  ownDispatcher: Dispatcher | undefined;
}

/**
 * Validates the options and fills in their defaults. Its one side effect is the default dispatcher, made last, so
 * an invalid option leaves nothing to close.
 */
export function resolveOptions(options: DownloadQueueOptions): ResolvedOptions {
  const maxParallelDownloads = positiveInteger(options.maxParallelDownloads ?? 5, "maxParallelDownloads");
  const tokens = (options.tokens ?? []).map(({ url, token }) => ({
    pattern: typeof url === "string" ? new RegExp(url) : url,
    token,
  }));
  const logger = options.logger ?? defaultLogger;
  const limiter = rateLimiter(options.maxBytesPerSecond, "maxBytesPerSecond");
  const proxy = options.dispatcher || options.proxy === undefined ? undefined : proxyUrl(options.proxy);
  const retries = nonNegativeInteger(options.retries ?? 5, "retries");
  const connectionsPerFile =
    options.connectionsPerFile === undefined
      ? undefined
      : positiveInteger(options.connectionsPerFile, "connectionsPerFile");
  const ca = checkCa(options.ca);
  const ownDispatcher = options.dispatcher
    ? undefined
    : defaultDispatcher(proxy, options.connectTimeoutMs ?? 30_000, ca && trustedContext(ca));
  return {
    maxParallelDownloads,
    eventBus: options.eventBus,
    tokens,
    logger,
    progressIntervalMs: options.progressIntervalMs ?? 100,
    limiter,
    overwrite: options.overwrite ?? false,
    settings: {
      dispatcher: options.dispatcher ?? (ownDispatcher as Dispatcher),
      headersTimeoutMs: options.headersTimeoutMs ?? 60_000,
      readTimeoutMs: options.readTimeoutMs ?? 60_000,
      retries,
      retryDelayMs: options.retryDelayMs ?? 1000,
      maxRetryDelayMs: options.maxRetryDelayMs ?? 60_000,
      maxRedirects: 10,
      connectionsPerFile,
      fsync: options.fsync ?? true,
      userAgent: options.userAgent ?? `dlqueue/${VERSION}`,
      logger,
      space: new SpaceLedger(),
      checkRedirect: options.checkRedirect,
    },
    ownDispatcher,
  };
}

/** The token of the first rule whose pattern matches the source. */
export function tokenFor(tokens: readonly TokenPattern[], source: string): string | undefined {
  return tokens.find((rule) => rule.pattern.test(source))?.token;
}

function proxyUrl(proxy: string): URL {
  let uri: URL;
  try {
    uri = new URL(proxy);
  } catch {
    throw new InvalidArgumentError(
      "proxy must be a URL such as http://proxy.example:3128 (credentials as user:pass@).",
    );
  }
  if (uri.protocol !== "http:" && uri.protocol !== "https:") {
    throw new InvalidArgumentError(`proxy must be an http:// or https:// URL, not ${uri.protocol}//.`);
  }
  return uri;
}

/**
 * The queue's own undici dispatcher: through `proxy` when given, else through the proxy the environment names
 * (HTTP_PROXY, HTTPS_PROXY, NO_PROXY and their lowercase forms), else direct. Every connection, to a proxy or to an
 * origin, is bounded by connectTimeoutMs, and trusts `trust`'s CAs when given: a direct origin (`connect`), one
 * reached through a proxy's tunnel (`requestTls`) and an https:// proxy itself (`proxyTls`).
 */
function defaultDispatcher(proxy: URL | undefined, timeout: number, trust: SecureContext | undefined): Dispatcher {
  const tls = trust ? { timeout, secureContext: trust } : { timeout };
  const connection = {
    connect: tls,
    connectTimeout: timeout,
    proxyTls: tls,
    requestTls: tls,
  };
  if (proxy === undefined) return new EnvHttpProxyAgent(connection);
  return new ProxyAgent({ ...connection, uri: proxy.href });
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----/g;

/**
 * `ca` as PEM texts, each holding certificates that can be read. OpenSSL skips what it cannot parse without a word,
 * so a wrong value (a file name, a key) would otherwise show only as every HTTPS download failing. Undefined when
 * there is nothing to add.
 */
export function checkCa(ca: DownloadQueueOptions["ca"]): string[] | undefined {
  if (ca === undefined) return undefined;
  const items = Array.isArray(ca) ? ca : [ca];
  const texts = items.map((item) => {
    const problem =
      typeof item === "string" || Buffer.isBuffer(item) ? pemProblem(item.toString()) : "something that is not text";
    if (problem) {
      throw new InvalidArgumentError(
        `ca holds ${problem}: pass the PEM text of CA certificates ("-----BEGIN CERTIFICATE-----…") as a string or ` +
          'Buffer, or an array of them; read a file first (ca: readFileSync("corp-ca.pem")), a file name is not enough.',
      );
    }
    return item.toString();
  });
  return texts.length > 0 ? texts : undefined;
}

/** `--ca-certificate FILE`: the file's PEM text, checked as `ca` is; the error names the file. */
export function readCaFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new InvalidArgumentError(
      `cannot read the CA certificate file ${path} (${code}): give the path of a PEM file holding the CA's certificate.`,
    );
  }
  const problem = pemProblem(text);
  if (problem) {
    throw new InvalidArgumentError(
      `the CA certificate file ${path} holds ${problem}: give the CA's certificate in PEM form ` +
        '("-----BEGIN CERTIFICATE-----…"); a DER file converts with `openssl x509 -inform DER -in FILE -out ca.pem`.',
    );
  }
  return text;
}

/** What is wrong with a would-be PEM text, or undefined when every certificate in it can be read. */
function pemProblem(text: string): string | undefined {
  const blocks = text.match(PEM_CERTIFICATE);
  if (!blocks) return 'no PEM certificate (no "-----BEGIN CERTIFICATE-----" block)';
  const { X509Certificate }: typeof import("node:crypto") = require("node:crypto");
  for (const block of blocks) {
    try {
      new X509Certificate(block);
    } catch (err) {
      return `a certificate that cannot be read (${(err as Error).message})`;
    }
  }
  return undefined;
}

/**
 * One TLS context trusting `cas` besides what Node trusts by default. Made once per dispatcher: handed to each
 * connection as a `ca` list, Node would parse the ~140 roots again every time, 38 ms of CPU per connection.
 */
export function trustedContext(cas: readonly string[]): SecureContext {
  const tls: typeof import("node:tls") = require("node:tls");
  return tls.createSecureContext({ ca: [...defaultCas(tls), ...cas] });
}

/**
 * Node's default trust, which a `ca` list replaces rather than extends: its bundled roots, NODE_EXTRA_CA_CERTS and,
 * under --use-system-ca, the system's store. Node 22.15+ lists them all; Node 20 lists the bundled roots only, so
 * NODE_EXTRA_CA_CERTS is read here again (Node read it at start-up, and only warns when it cannot).
 */
function defaultCas(tls: typeof import("node:tls")): readonly string[] {
  const { getCACertificates } = tls as { getCACertificates?: (type: "default") => string[] };
  if (getCACertificates) return getCACertificates("default");
  const extra = process.env.NODE_EXTRA_CA_CERTS;
  if (!extra) return tls.rootCertificates;
  try {
    return [...tls.rootCertificates, readFileSync(extra, "utf8")];
  } catch {
    return tls.rootCertificates;
  }
}

/** A single-file request, checked: what the job is made of. */
export interface CheckedRequest {
  source: string;
  dest: string;
  priority: number;
  sha256: string | undefined;
  size: number | undefined;
  lease: string | undefined;
}

export function checkRequest(request: DownloadRequest): CheckedRequest {
  const source = checkSource(request.source);
  const dest = checkDest(request.dest);
  const priority = checkPriority(request.priority);
  const { sha256, size } = checkExpectations(request);
  return { source, dest, priority, sha256, size, lease: checkLease(request.lease) };
}

/** A multi-file request, checked: every part's URL and path, before any part is queued. */
export function checkMultiFileRequest(request: MultiFileDownloadRequest): {
  dest: string;
  parts: { source: string; path: string; sha256?: string; size?: number }[];
} {
  if (!Array.isArray(request.parts) || request.parts.length === 0) {
    throw new InvalidArgumentError("multifileDownload needs at least one part ({ url, path }).");
  }
  const dest = checkDest(request.dest);
  const parts = request.parts.map((part) => ({
    source: checkSource(part.url),
    path: checkRelativePath(part.path),
    ...checkExpectations(part),
  }));
  checkPriority(request.priority);
  return { dest, parts };
}

/** The request's per-job options, without keeping the request itself alive. */
export function jobOptions(request: JobOptions): JobOptions {
  if (request.maxBytesPerSecond === undefined && request.overwrite === undefined) return {};
  return { maxBytesPerSecond: request.maxBytesPerSecond, overwrite: request.overwrite };
}

function checkSource(source: string | URL): string {
  let url: URL;
  try {
    url = new URL(String(source));
  } catch {
    throw new InvalidUrlError(String(source));
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new UnsupportedSchemeError(url.protocol);
  if (!url.hostname) throw new InvalidUrlError(String(source));
  return url.href;
}

function checkPriority(priority: number | undefined): number {
  if (priority === undefined) return 10;
  if (!Number.isFinite(priority)) throw new InvalidArgumentError(`priority must be a number, not ${priority}.`);
  return priority;
}

function checkExpectations(expect: { sha256?: string; size?: number }): { sha256?: string; size?: number } {
  if (expect.size !== undefined) nonNegativeInteger(expect.size, "size");
  if (expect.sha256 !== undefined && !/^[0-9a-f]{64}$/i.test(expect.sha256)) {
    throw new InvalidArgumentError("sha256 must be 64 hexadecimal characters.");
  }
  return { sha256: expect.sha256?.toLowerCase(), size: expect.size };
}

/**
 * The lease goes into the lock's symbolic link (or file) as it is; a control character would end or garble it, and
 * a link's target has a length limit.
 */
function checkLease(lease: string | undefined): string | undefined {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it refuses
  if (lease !== undefined && (typeof lease !== "string" || !/^[^\x00-\x1f\x7f]{1,1000}$/.test(lease))) {
    throw new InvalidArgumentError(
      "lease must be a job key of 1 to 1000 characters without control characters (such as a shared queue's job id).",
    );
  }
  return lease;
}

function checkDest(dest: string): string {
  if (typeof dest !== "string" || dest.length === 0 || dest.includes("\0")) {
    throw new InvalidArgumentError("dest must be a non-empty path to a folder or a file.");
  }
  return dest;
}

function positiveInteger(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new InvalidArgumentError(`${name} must be a positive integer.`);
  return value;
}

function nonNegativeInteger(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new InvalidArgumentError(`${name} must be 0 or more.`);
  return value;
}
