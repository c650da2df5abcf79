/**
 * JSON schemas of every body, parameter and response: Fastify validates requests with them (without converting types:
 * `"5"` is not an integer; unknown fields are dropped, as pydantic ignores them) and @fastify/swagger turns them into
 * the OpenAPI document at /docs.
 */

const status = {
  type: "string",
  enum: ["waiting", "running", "paused", "completed", "cancelled", "error"],
} as const;
const nullableString = (description: string) => ({ type: ["string", "null"], description }) as const;
const timestamp = (description: string) =>
  ({ type: ["string", "null"], format: "date-time", description: `${description} (ISO 8601, UTC)` }) as const;

/** InvokeAI's DownloadJob as its REST API sends it (src/wire.ts jobToRest): every field, null when unset. */
export const jobSchema = {
  $id: "DownloadJob",
  type: "object",
  properties: {
    source: { type: "string" },
    dest: { type: "string", description: "Absolute path: the folder or file the job writes to." },
    id: { type: "integer" },
    priority: { type: "integer" },
    status,
    download_path: nullableString("The file being written, once the server has answered."),
    job_started: timestamp("When the transfer started"),
    job_ended: timestamp("When the job completed, failed or was cancelled"),
    bytes: { type: "integer" },
    total_bytes: { type: "integer", description: "0 while unknown." },
    content_type: nullableString("The response's Content-Type."),
    error_type: nullableString('A short label, e.g. "HTTPError(Not Found)".'),
    error: nullableString("What went wrong, in full."),
  },
  required: [
    "source",
    "dest",
    "id",
    "priority",
    "status",
    "download_path",
    "job_started",
    "job_ended",
    "bytes",
    "total_bytes",
    "content_type",
    "error_type",
    "error",
  ],
  // Fields a later version adds must reach clients rather than be dropped by the serializer.
  additionalProperties: true,
} as const;

export const multiJobSchema = {
  $id: "MultiFileDownloadJob",
  type: "object",
  properties: {
    id: { type: "integer" },
    dest: { type: "string" },
    status,
    download_path: { type: "string", description: "The parts' common root folder." },
    bytes: { type: "integer" },
    total_bytes: { type: "integer" },
    error_type: nullableString("A short label of the first part's failure."),
    error: nullableString("What went wrong, in full."),
    download_parts: { type: "array", items: { $ref: "DownloadJob#" } },
    source: { type: "string", description: "A model's source (hf://…, civitai://…) as resolved; absent otherwise." },
    commit: { type: "string", description: "hf:// models: the commit every part was fetched at." },
    snapshot_path: { type: "string", description: "hf:// models: the folder holding the repo's tree." },
  },
  required: ["id", "dest", "status", "download_path", "bytes", "total_bytes", "error_type", "error", "download_parts"],
  additionalProperties: true,
} as const;

export const errorSchema = {
  $id: "Error",
  type: "object",
  properties: { detail: { type: "string", description: "What went wrong and what to change." } },
  required: ["detail"],
} as const;

/**
 * A signed 32-bit range: what every client language's plain int holds, and far more levels than a queue needs.
 */
export const PRIORITY_MIN = -(2 ** 31);
export const PRIORITY_MAX = 2 ** 31 - 1;
const priority = {
  type: "integer",
  minimum: PRIORITY_MIN,
  maximum: PRIORITY_MAX,
  default: 10,
  description: "Lower runs first.",
} as const;
const accessToken = {
  type: ["string", "null"],
  maxLength: 4096,
  description: "Sent as a Bearer token to the source's host only; never returned.",
} as const;
const dest = {
  type: "string",
  maxLength: 4096,
  description:
    'Relative to the service\'s download root: an existing folder, a file to create, or a folder to create when it ends in "/". "" is the root.',
} as const;
const url = { type: "string", minLength: 1, maxLength: 8192, description: "An http:// or https:// URL." } as const;
const globs = (description: string) =>
  ({ type: "array", maxItems: 256, items: { type: "string", minLength: 1, maxLength: 1024 }, description }) as const;

/** Sources that may leave dest out: models, whose files go under a folder of their own by default. */
const MODEL_SOURCE = "^(hf://|civitai://|https?://(www\\.)?civitai\\.com/models/)";

/** `dest` is required for a URL, as InvokeAI's body has it, and optional for a model. */
export const downloadBody = {
  type: "object",
  properties: {
    source: {
      ...url,
      description:
        "An http:// or https:// URL, or a model: hf://ORG/REPO[@REV][/PATH], hf://datasets/…, " +
        "civitai://models/ID[@VERSION] or a Civitai model page URL. A model answers a multi-file job.",
    },
    dest: {
      ...dest,
      description: `${dest.description} Required for a URL; for an hf:// model, default "<repo name>/" (its tree goes under it), for Civitai the root.`,
    },
    priority,
    access_token: accessToken,
    include: globs("hf:// models: only the repo files matching one of these globs (huggingface_hub's allow_patterns)."),
    exclude: globs("hf:// models: leave out the repo files matching one of these globs (ignore_patterns)."),
    all_files: { type: "boolean", description: "Civitai models: every file of the version, not only the primary one." },
  },
  required: ["source"],
  // validation.ts drops the failed "if" from the 422, which then lists only what to add: dest.
  if: { properties: { source: { type: "string", pattern: MODEL_SOURCE } }, required: ["source"] },
  else: { required: ["dest"] },
  additionalProperties: false,
} as const;

export const multiDownloadBody = {
  type: "object",
  properties: {
    parts: {
      type: "array",
      minItems: 1,
      items: {
        type: "object",
        properties: {
          url,
          path: { type: "string", minLength: 1, maxLength: 4096, description: "Relative to dest." },
        },
        required: ["url", "path"],
        additionalProperties: false,
      },
    },
    dest,
    priority,
    access_token: accessToken,
  },
  required: ["parts", "dest"],
  additionalProperties: false,
} as const;

/** A string, not an integer: an id that cannot exist (`-1`, `abc`, `1.5`) is a 404 like an unknown one. */
export const idParams = {
  type: "object",
  properties: { id: { type: "string", description: "The job's id, a whole number from 0." } },
  required: ["id"],
} as const;

export interface IdParams {
  id: string;
}

export const eventsQuery = {
  type: "object",
  properties: {
    token: {
      type: "string",
      description: "The auth token, for browsers' EventSource, which cannot send an Authorization header.",
    },
  },
} as const;

export interface EventsQuery {
  token?: string;
}

export const noContent = { description: "Done.", type: "null" } as const;
export const notFound = { description: "No job with this id.", $ref: "Error#" } as const;
export const badRequest = { description: "The request was refused; `detail` says why.", $ref: "Error#" } as const;

/** FastAPI's answer to a body that fails validation, which InvokeAI's clients parse. */
export const validationErrorSchema = {
  $id: "HTTPValidationError",
  type: "object",
  properties: {
    detail: {
      type: "array",
      items: {
        type: "object",
        properties: {
          loc: {
            type: "array",
            items: { anyOf: [{ type: "string" }, { type: "integer" }] },
            description: 'Where: ["body", "priority"], ["body", "parts", 0, "url"].',
          },
          msg: { type: "string", description: "What is wrong and what to send instead." },
          type: { type: "string", description: 'pydantic\'s error type, e.g. "missing", "int_type".' },
        },
        required: ["loc", "msg", "type"],
      },
    },
  },
  required: ["detail"],
} as const;
export const unprocessable = { description: "The body failed validation.", $ref: "HTTPValidationError#" } as const;
