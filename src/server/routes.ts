/**
 * InvokeAI's `download_queue` router (same paths, bodies and status codes), plus multi-file jobs, pause/resume and
 * the event stream. Mounted under API_PREFIX.
 */
import { resolve } from "node:path";
import type { FastifyInstance } from "fastify";
import { DlqError } from "../errors.js";
import { resolveDest } from "../files/root.js";
import { MultiFileDownloadJob } from "../job.js";
import type { JobQueue } from "../queue-api.js";
import { civitaiEndpoint, isCivitaiSource } from "../sources/civitai.js";
import { hfEndpoint, isHfSource, parseHfSource } from "../sources/hf.js";
import {
  downloadRequestFromWire,
  jobToRest,
  multiFileRequestFromWire,
  multiJobToRest,
  type WireDownloadRequest,
  type WireMultiFileDownloadRequest,
} from "../wire.js";
import { type EventHub, streamEvents } from "./events.js";
import { API_PREFIX } from "./prefix.js";
import {
  badRequest,
  downloadBody,
  type EventsQuery,
  eventsQuery,
  type IdParams,
  idParams,
  multiDownloadBody,
  noContent,
  notFound,
  unprocessable,
} from "./schemas.js";
import { type AddressPolicy, assertPublicUrl, parseSource } from "./ssrf.js";

export interface RouteOptions {
  queue: JobQueue;
  hub: EventHub;
  /** Real path of the download root. */
  root: string;
  policy: AddressPolicy;
  /** Called for every open event stream when the server closes, so closing does not wait on them. */
  trackStream: (end: () => void) => () => void;
}

const tags = ["download_queue"];
const security = [{ bearer: [] }];
/** On the job list: the number of the last event it reflects, so a client can line it up with the event stream. */
const LAST_EVENT_HEADER = "x-last-event-id";

export async function queueRoutes(app: FastifyInstance, options: RouteOptions): Promise<void> {
  const { queue, hub, root, policy } = options;

  app.get(
    "/",
    {
      schema: {
        tags,
        security,
        operationId: "list_downloads",
        summary: "Every download job, waiting, running or finished, until pruned",
        description: `The ${LAST_EVENT_HEADER} header gives the number of the last event that this list already reflects.`,
        response: { 200: { type: "array", items: { $ref: "DownloadJob#" } } },
      },
    },
    async (_request, reply) => {
      // Read before the list: an event published while a shared queue answers is then replayed, not missed.
      reply.header(LAST_EVENT_HEADER, String(hub.lastId));
      return (await queue.listJobs()).map(jobToRest);
    },
  );

  app.patch(
    "/",
    {
      schema: {
        tags,
        security,
        operationId: "prune_downloads",
        summary: "Forget finished jobs (completed, cancelled, error)",
        response: { 204: noContent },
      },
    },
    async (_request, reply) => {
      await queue.pruneJobs();
      return reply.code(204).send();
    },
  );

  app.post<{ Body: DownloadBody }>(
    "/i/",
    {
      schema: {
        tags,
        security,
        operationId: "download",
        summary: "Queue a download; a model source (hf://, Civitai) queues its files as one multi-file job",
        description:
          "A model is resolved first (its file list at one commit, with the hub's sha256 of each file); an unknown " +
          "repo, revision, path or model version is a 404, a gated or private one the token does not open a 403, " +
          "an include/exclude that leaves nothing a 400, each saying what to do. Nothing is written before that. " +
          "The files go under dest inside the download root, never into a shared Hugging Face cache.",
        body: downloadBody,
        response: {
          200: { anyOf: [{ $ref: "DownloadJob#" }, { $ref: "MultiFileDownloadJob#" }] },
          400: badRequest,
          403: { description: "A gated or private model the token does not open.", $ref: "Error#" },
          404: { description: "No such repo, revision, path or model version.", $ref: "Error#" },
          422: unprocessable,
        },
      },
    },
    async (request) => {
      const body = request.body;
      const model = modelKind(body.source);
      if (model) return modelDownload(body, model);
      for (const field of ["include", "exclude", "all_files"] as const) {
        if (body[field] !== undefined) throw new ModelOptionError(field);
      }
      await checkSource(body.source, policy);
      // The schema requires dest for anything but a model source.
      const wire = body as WireDownloadRequest;
      const dest = await resolveDest(root, wire.dest);
      return jobToRest(await queue.download(downloadRequestFromWire(wire, dest)));
    },
  );

  /** The hub (or Civitai) API is checked as any source is: its file URLs are on it, and redirects are guarded. */
  async function modelDownload(body: DownloadBody, model: ModelKind) {
    await checkSource(model === "hf" ? hfEndpoint() : civitaiEndpoint(), policy);
    // A folder, so the repo's tree goes under it; the default keeps two models' files apart.
    const folder = body.dest ?? (model === "hf" ? `${parseHfSource(body.source).repoId.split("/").at(-1)}/` : "");
    // Always a folder for a model; the trailing "/" that tells the queue so for a URL would only blur snapshot_path.
    const dest = resolve(await resolveDest(root, folder));
    const job = await queue.modelDownload({
      source: body.source,
      dest,
      include: body.include,
      exclude: body.exclude,
      allFiles: body.all_files,
      priority: body.priority,
      accessToken: body.access_token ?? undefined,
    });
    return multiJobToRest(job);
  }

  app.post<{ Body: WireMultiFileDownloadRequest }>(
    "/multi/",
    {
      schema: {
        tags,
        security,
        operationId: "multifile_download",
        summary: "Queue several files under one dest; one failing fails (and cancels) them all",
        body: multiDownloadBody,
        response: { 200: { $ref: "MultiFileDownloadJob#" }, 400: badRequest, 422: unprocessable },
      },
    },
    async (request) => {
      const body = request.body;
      for (const part of body.parts) await checkSource(part.url, policy);
      const dest = await resolveDest(root, body.dest);
      // The queue keeps each part's path inside dest; this also refuses links below dest that lead out of the root.
      for (const part of body.parts) await resolveDest(root, body.dest ? `${body.dest}/${part.path}` : part.path);
      return multiJobToRest(await queue.multifileDownload(multiFileRequestFromWire(body, dest)));
    },
  );

  app.get(
    "/multi/",
    {
      schema: {
        tags,
        security,
        operationId: "list_multifile_downloads",
        summary: "Every multi-file job, until pruned",
        response: { 200: { type: "array", items: { $ref: "MultiFileDownloadJob#" } } },
      },
    },
    async () => (await queue.listMultifileJobs()).map(multiJobToRest),
  );

  app.get<{ Params: IdParams }>(
    "/i/:id",
    {
      schema: {
        tags,
        security,
        operationId: "get_download_job",
        summary: "One job (a multi-file job's id gives the multi-file job)",
        params: idParams,
        response: {
          200: { anyOf: [{ $ref: "DownloadJob#" }, { $ref: "MultiFileDownloadJob#" }] },
          404: notFound,
        },
      },
    },
    async (request) => {
      const job = await queue.idToJob(jobId(request.params.id));
      return job instanceof MultiFileDownloadJob ? multiJobToRest(job) : jobToRest(job);
    },
  );

  app.delete<{ Params: IdParams }>(
    "/i/:id",
    {
      schema: {
        tags,
        security,
        operationId: "cancel_download_job",
        summary: "Cancel a job; its partial file is deleted",
        params: idParams,
        response: { 204: noContent, 404: notFound },
      },
    },
    async (request, reply) => {
      await queue.cancelJob(jobId(request.params.id));
      return reply.code(204).send();
    },
  );

  app.delete(
    "/i",
    {
      schema: {
        tags,
        security,
        operationId: "cancel_all_download_jobs",
        summary: "Cancel every job",
        response: { 204: noContent },
      },
    },
    async (_request, reply) => {
      await queue.cancelAllJobs();
      return reply.code(204).send();
    },
  );

  for (const action of ["pause", "resume"] as const) {
    app.post<{ Params: IdParams }>(
      `/i/:id/${action}`,
      {
        schema: {
          tags,
          security,
          operationId: `${action}_download_job`,
          summary:
            action === "pause"
              ? "Stop a job and keep its partial file"
              : "Queue a paused job again; it continues where it stopped",
          params: idParams,
          response: { 204: noContent, 404: notFound },
        },
      },
      async (request, reply) => {
        const id = jobId(request.params.id);
        if (action === "pause") await queue.pauseJob(id);
        else await queue.resumeJob(id);
        return reply.code(204).send();
      },
    );
  }

  app.get<{ Querystring: EventsQuery }>(
    "/events",
    {
      schema: {
        tags,
        security,
        operationId: "download_events",
        summary: "Server-Sent Events: every queue event, replayed from Last-Event-ID after a reconnect",
        description:
          "`id:` is the event's number, `event:` its name (download_started, download_progress, download_complete, " +
          "download_error, download_cancelled, download_paused), `data:` its JSON payload. Progress comes at most " +
          "4 times a second per job. A `resync` event means the missed events are gone: reload the job list.",
        querystring: eventsQuery,
        produces: ["text/event-stream"],
        response: { 200: { description: "An endless text/event-stream.", type: "string" } },
      },
      config: { queryToken: true },
    },
    (request, reply) => {
      reply.hijack();
      const res = reply.raw;
      // Headers set by hooks (CORS) live on the reply, which a hijacked response no longer sends.
      for (const [name, value] of Object.entries(reply.getHeaders()))
        if (value !== undefined) res.setHeader(name, value);
      res.writeHead(200, {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
        // nginx would otherwise buffer the stream.
        "x-accel-buffering": "no",
      });
      const end = streamEvents(hub, res, headerValue(request.headers["last-event-id"]));
      const untrack = options.trackStream(end);
      res.on("close", untrack);
    },
  );
}

/** Answered 404 like an unknown id: a client asking for `/i/-1` has the wrong job, not a malformed request. */
export class InvalidJobIdError extends DlqError {
  constructor(id: string) {
    super(
      `No job with id ${JSON.stringify(id)}: job ids are whole numbers from 0; GET ${API_PREFIX}/ lists the jobs.`,
      "DLQ_ERR_INVALID_JOB_ID",
    );
  }
}

/** The id in a path, as a number; anything that cannot be a job's id (negative, fractional, beyond 2^53) is a 404. */
function jobId(text: string): number {
  const id = /^\d{1,16}$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(id)) throw new InvalidJobIdError(text);
  return id;
}

/** POST /i/'s body: InvokeAI's, plus what a model source takes. */
interface DownloadBody extends Omit<WireDownloadRequest, "dest"> {
  dest?: string;
  include?: string[];
  exclude?: string[];
  all_files?: boolean;
}

type ModelKind = "hf" | "civitai";

function modelKind(source: string): ModelKind | undefined {
  if (isHfSource(source)) return "hf";
  return isCivitaiSource(source, civitaiEndpoint()) ? "civitai" : undefined;
}

/** include, exclude or all_files sent with a plain URL: refused rather than ignored, since the client meant a model. */
export class ModelOptionError extends DlqError {
  constructor(field: string) {
    super(
      `${field} applies to model sources (hf://…, civitai://…); send it with a model, or leave it out for a URL.`,
      "DLQ_ERR_INVALID_ARGUMENT",
    );
  }
}

async function checkSource(source: string, policy: AddressPolicy): Promise<void> {
  await assertPublicUrl(parseSource(source), policy);
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}
