/**
 * JSON schemas of every body, parameter and response: Fastify validates requests with them (unknown fields are
 * refused, not dropped) and @fastify/swagger turns them into the OpenAPI document at /docs.
 */

const status = {
  type: "string",
  enum: ["waiting", "running", "paused", "completed", "cancelled", "error"],
} as const;

/** InvokeAI's DownloadJob as dlqueue writes it (src/wire.ts); absent fields are omitted. */
export const jobSchema = {
  $id: "DownloadJob",
  type: "object",
  properties: {
    source: { type: "string" },
    dest: { type: "string", description: "Absolute path: the folder or file the job writes to." },
    id: { type: "integer" },
    priority: { type: "integer" },
    status,
    download_path: { type: "string" },
    job_started: { type: "string", format: "date-time" },
    job_ended: { type: "string", format: "date-time" },
    bytes: { type: "integer" },
    total_bytes: { type: "integer" },
    error_type: { type: "string" },
    error: { type: "string" },
  },
  required: ["source", "dest", "id", "priority", "status", "bytes", "total_bytes"],
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
    download_path: { type: "string" },
    bytes: { type: "integer" },
    total_bytes: { type: "integer" },
    error_type: { type: "string" },
    error: { type: "string" },
    download_parts: { type: "array", items: { $ref: "DownloadJob#" } },
  },
  required: ["id", "dest", "status", "download_path", "bytes", "total_bytes", "download_parts"],
  additionalProperties: true,
} as const;

export const errorSchema = {
  $id: "Error",
  type: "object",
  properties: { detail: { type: "string", description: "What went wrong and what to change." } },
  required: ["detail"],
} as const;

const priority = { type: "integer", default: 10, description: "Lower runs first." } as const;
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

export const downloadBody = {
  type: "object",
  properties: { source: url, dest, priority, access_token: accessToken },
  required: ["source", "dest"],
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

export const idParams = {
  type: "object",
  properties: { id: { type: "integer", minimum: 0, description: "The job's id." } },
  required: ["id"],
  additionalProperties: false,
} as const;

export interface IdParams {
  id: number;
}

export const eventsQuery = {
  type: "object",
  properties: {
    token: {
      type: "string",
      description: "The auth token, for browsers' EventSource, which cannot send an Authorization header.",
    },
  },
  additionalProperties: false,
} as const;

export interface EventsQuery {
  token?: string;
}

export const noContent = { description: "Done.", type: "null" } as const;
export const notFound = { description: "No job with this id.", $ref: "Error#" } as const;
export const badRequest = { description: "The request was refused; `detail` says why.", $ref: "Error#" } as const;
