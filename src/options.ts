/**
 * What callers pass in: the queue's options, a job's request and its callbacks. Types only, with each default
 * documented where it applies, so any queue (in-process or not) can take the same options.
 */
import type { Dispatcher } from "undici";
import type { DownloadJob, MultiFileDownloadJob } from "./job.js";
import type { Logger } from "./logger.js";
import type { JobStore } from "./store/store.js";

export interface TokenRule {
  /** A RegExp, or the source of one (InvokeAI's `url_regex`), tested against the job's source URL. */
  url: string | RegExp;
  token: string;
}

export interface EventBus {
  emit(event: string, payload: object): unknown;
}

export interface DownloadQueueOptions {
  /** Transfers running at once (default 5). */
  maxParallelDownloads?: number;
  /** An application-wide bus that receives every event too (InvokeAI's `event_bus`). */
  eventBus?: EventBus;
  /**
   * Per-host tokens (InvokeAI's `remote_api_tokens`): the first rule matching a source gives its token (default:
   * none).
   */
  tokens?: TokenRule[];
  /** Retries of transient failures per job, with exponential backoff (default 5). */
  retries?: number;
  /** First backoff delay; it doubles per failure up to `maxRetryDelayMs` (default 1000). */
  retryDelayMs?: number;
  /** The longest backoff delay (default 60000). */
  maxRetryDelayMs?: number;
  /** A body that sends nothing for this long is a stall and is retried (default 60000). */
  readTimeoutMs?: number;
  /** Waiting for response headers longer than this is retried (default 60000). */
  headersTimeoutMs?: number;
  /** TCP/TLS connect timeout of the default dispatcher (default 30000). */
  connectTimeoutMs?: number;
  /**
   * Your own undici dispatcher (proxy, custom agent); InvokeAI's `requests_session`. Default: the queue's own, which
   * follows `proxy` or the environment's proxy variables. Yours is used as it is: `ca`, `proxy` and
   * `connectTimeoutMs` do not apply to it.
   */
  dispatcher?: Dispatcher;
  /**
   * Parallel range requests per file of 8 MiB or more, when the server supports ranges (aria2's `-x`). Counted per
   * job: maxParallelDownloads still limits jobs, not connections. Default: automatic, a file of 64 MiB or more uses
   * up to 4 connections, one per download slot the queue has idle (one file alone gets 4; five files at once, one
   * each), and the extra connections never keep a job waiting. Either way, a server that answers 429 or 503 to one
   * of them gets one connection fewer, and a server that refuses ranges gets one stream.
   */
  connectionsPerFile?: number;
  /**
   * Flush files of 8 MiB or more to the disk before they are renamed into place, so a power cut or an OS crash
   * cannot leave a file with holes at its final path (default true). Off, a download finishes as soon as the
   * kernel has its bytes, as with curl and aria2; a killed process loses nothing either way.
   */
  fsync?: boolean;
  /** How often, at most, `onProgress` and `download_progress` fire per job (default 100 ms). */
  progressIntervalMs?: number;
  /** Default: quiet unless NODE_DEBUG=dlqueue, warnings and errors to stderr. */
  logger?: Logger;
  /** Default: `dlqueue/<version>`. */
  userAgent?: string;
  /**
   * Where jobs are kept: a path to a SQLite file (created if missing) makes the queue durable: unfinished jobs
   * come back and resume when a queue is created on the same file. Default: in memory.
   */
  store?: string | JobStore;
  /** Refuse a redirect by throwing (used by the REST service against SSRF). Default: every redirect is followed. */
  checkRedirect?: (url: URL) => void | Promise<void>;
  /**
   * Bytes per second for all transfers of this queue together (default: unlimited). A job's own
   * `maxBytesPerSecond` applies too: the lower wins.
   */
  maxBytesPerSecond?: number;
  /**
   * A proxy URL for every request (`http://user:pass@host:port`). Without it and without `dispatcher`, the proxy
   * comes from HTTP_PROXY / HTTPS_PROXY / NO_PROXY (and their lowercase forms).
   */
  proxy?: string;
  /**
   * More certificate authorities to trust, in PEM form (the text of a `.pem` file, not its name), as `tls.connect`'s
   * `ca`: for a TLS-intercepting corporate proxy, or a private model mirror with its own CA. Added to the CAs Node
   * trusts by default (its bundled roots and NODE_EXTRA_CA_CERTS), so public hosts such as huggingface.co are still
   * reached. Used for origins and for an https:// proxy alike. Default: Node's CAs only (NODE_EXTRA_CA_CERTS works
   * without this option).
   */
  ca?: string | Buffer | Array<string | Buffer>;
  /**
   * Fetch a file again even when the final path already holds it complete (default false: a finished file whose
   * sha256, or size and validators, still match is reported completed without transferring its body).
   */
  overwrite?: boolean;
}

export interface DownloadCallbacks<J> {
  onStart?: (job: J) => unknown;
  onProgress?: (job: J) => unknown;
  onComplete?: (job: J) => unknown;
  onCancelled?: (job: J) => unknown;
  onError?: (job: J, error: Error) => unknown;
}

export interface DownloadRequest extends DownloadCallbacks<DownloadJob> {
  source: string | URL;
  /** An existing folder (the name comes from the server), or the file to create. */
  dest: string;
  /** Lower runs first (default 10). */
  priority?: number;
  /** Default: the first matching `tokens` rule's. */
  accessToken?: string;
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** Expected sha256 (hex); a mismatch fails the job and discards the file. */
  sha256?: string;
  /** Expected size in bytes; a response that is larger is stopped at once. */
  size?: number;
  /** This job's own rate limit in bytes per second; the queue's applies too (the lower wins). */
  maxBytesPerSecond?: number;
  /** Fetch again even when the final path already holds the complete file (default: the queue's `overwrite`). */
  overwrite?: boolean;
  /**
   * A key that names the job across processes: a worker of the shared queue passes its job's key, so the worker
   * that inherits a job whose first worker died may take over the file lock that worker left, even from another
   * host. Not kept in the store: it means nothing after a restart.
   */
  lease?: string;
}

export interface RemoteFile {
  url: string | URL;
  /** Relative to the job's dest; must not leave it. */
  path: string;
  sha256?: string;
  size?: number;
}

export interface MultiFileDownloadRequest extends DownloadCallbacks<MultiFileDownloadJob> {
  parts: RemoteFile[];
  dest: string;
  /** Lower runs first (default 10). */
  priority?: number;
  /** Default: the first matching `tokens` rule's. */
  accessToken?: string;
  headers?: Record<string, string>;
  /** The job's rate limit in bytes per second, shared by its parts; the queue's applies too (the lower wins). */
  maxBytesPerSecond?: number;
  /** Fetch every part again even when its file is already complete (default: the queue's `overwrite`). */
  overwrite?: boolean;
}

/**
 * A model by its id rather than its URLs: `hf://ORG/REPO[@REV][/PATH]` (also `hf://datasets/…`, `hf://spaces/…`),
 * `civitai://models/ID[@VERSION]` or a Civitai model page URL. Resolved first (to one commit for hf://, to the
 * version's files for Civitai), then queued as one MultiFileDownloadJob whose parts carry the hub's sha256 and size.
 */
export interface ModelDownloadRequest extends DownloadCallbacks<DownloadJob | MultiFileDownloadJob> {
  source: string;
  /** A folder: the repo's tree (or the Civitai files) under it, and nothing in the cache. Required for Civitai. */
  dest?: string;
  /**
   * hf:// only, when `dest` is absent: the Hugging Face cache root to lay the files out in, as huggingface_hub does
   * (default, or `true`: hfCacheRoot(), i.e. $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub).
   */
  cache?: string | boolean;
  /** hf:// only: huggingface_hub's allow_patterns (fnmatch on the whole repo path; `*` crosses folders). */
  include?: string[];
  /** hf:// only: huggingface_hub's ignore_patterns. */
  exclude?: string[];
  /** Civitai: every file of the version, not only the primary one (default false). */
  allFiles?: boolean;
  /** Lower runs first (default 10). */
  priority?: number;
  /** hf:// only: the token for the hub endpoint (default: hfToken(): HF_TOKEN, else the token file). */
  accessToken?: string;
  /** Fetch every file again even when it is already complete (default: the queue's `overwrite`). */
  overwrite?: boolean;
  /** The job's rate limit in bytes per second, shared by its files. */
  maxBytesPerSecond?: number;
}

/** What a job asked for besides where and what: kept in the store, so a restored job behaves the same. */
export type JobOptions = Pick<DownloadRequest, "maxBytesPerSecond" | "overwrite">;
