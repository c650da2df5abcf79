/**
 * The download queue as an HTTP service: InvokeAI's download_queue API under /api/v1/download_queue, an event stream,
 * OpenAPI at /docs and the web page at /. A factory rather than a listening server, so a caller can add routes of its
 * own, inject requests, or listen wherever it likes.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import fastifyStatic from "@fastify/static";
import fastifySwagger from "@fastify/swagger";
import fastifySwaggerUi from "@fastify/swagger-ui";
import Fastify, { type FastifyError, type FastifyInstance } from "fastify";
import { DlqError } from "../errors.js";
import { prepareRoot } from "../files/root.js";
import { defaultLogger, type Logger } from "../logger.js";
import type { JobQueue } from "../queue-api.js";
import { VERSION } from "../version.js";
import { EventHub, type EventHubOptions } from "./events.js";
import { API_PREFIX } from "./prefix.js";
import { queueRoutes } from "./routes.js";
import { errorSchema, jobSchema, multiJobSchema, validationErrorSchema } from "./schemas.js";
import { installAccessControl, markRoutesPublic } from "./security.js";
import type { Resolver } from "./ssrf.js";
import { parseJsonBody, validationIssues } from "./validation.js";

export interface ServerOptions {
  /**
   * The queue to serve. This server checks only what is submitted to it: unless allowPrivateNetworks, the queue must
   * check redirects and connections itself, as the one createService() (service.ts) builds does.
   */
  queue: JobQueue;
  /** Every dest is resolved inside this folder, created if missing. */
  root: string;
  /** Required on anything under /api when set: `Authorization: Bearer <token>`. */
  authToken?: string;
  /** Let network clients download from private, loopback and link-local addresses (default false). */
  allowPrivateNetworks?: boolean;
  /** An origin allowed to call the API from its pages (CORS is off without it). */
  cors?: string;
  /** Stands in for DNS when checking sources (tests). */
  resolve?: Resolver;
  /** Folder of the built page (default: dist/web of this package). */
  webRoot?: string;
  /** Largest request body in bytes (default 64 KiB). */
  bodyLimit?: number;
  events?: EventHubOptions;
  /** Where unexpected server errors are reported (default: the library's logger). */
  logger?: Logger;
}

export async function buildServer(options: ServerOptions): Promise<FastifyInstance> {
  const root = await prepareRoot(options.root);
  const logger = options.logger ?? defaultLogger;
  const app = Fastify({
    // Request logs would carry the ?token= of event streams; errors are reported through `logger` instead.
    logger: false,
    bodyLimit: options.bodyLimit ?? 64 * 1024,
    // Closing must not wait on connections a client opened and never used (browsers and undici open spares).
    forceCloseConnections: true,
    routerOptions: { ignoreTrailingSlash: true },
    // As pydantic: no type conversion ("5" is not an integer), unknown fields dropped before the handler sees the
    // body, every failure listed; `verbose` gives each failure the value it refers to.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: true, allErrors: true, verbose: true } },
  });

  // Bodies are JSON only; a text/plain body (which any web page may send cross-site without asking) gets a 415.
  app.removeContentTypeParser(["application/json", "text/plain"]);
  app.addContentTypeParser("application/json", { parseAs: "string" }, (_request, body, done) => {
    try {
      done(null, parseJsonBody(body as string));
    } catch (err) {
      done(err as Error, undefined);
    }
  });
  app.setErrorHandler((error: FastifyError, _request, reply) => {
    if (error.validation) {
      return reply.code(422).send({ detail: validationIssues(error.validation, error.validationContext) });
    }
    if (error instanceof DlqError) {
      return reply.code(STATUS_OF_CODE[error.code] ?? 400).send({ detail: error.message });
    }
    if (error.statusCode !== undefined && error.statusCode < 500) {
      return reply.code(error.statusCode).send({ detail: describeHttpError(error) });
    }
    logger.error(`server error: ${error.stack ?? error.message}`);
    return reply.code(500).send({ detail: `Internal error (${error.message}); see the server's log.` });
  });
  app.setNotFoundHandler((request, reply) =>
    reply.code(404).send({
      detail: `No route ${request.method} ${request.url.split("?")[0]}: the API is under ${API_PREFIX}/ (see /docs).`,
    }),
  );

  installAccessControl(app, { authToken: options.authToken, cors: options.cors });

  for (const schema of [jobSchema, multiJobSchema, errorSchema, validationErrorSchema]) app.addSchema(schema);
  await app.register(fastifySwagger, {
    openapi: {
      info: {
        title: "dlqueue",
        version: VERSION,
        description: "A download queue for very large files; InvokeAI's download_queue API plus events.",
      },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
    },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => String(json.$id ?? `def-${i}`) },
  });

  const hub = new EventHub(options.queue, options.events);
  const streams = new Set<() => void>();
  app.addHook("preClose", async () => {
    for (const end of streams) end();
  });
  app.addHook("onClose", async () => hub.close());
  await app.register(queueRoutes, {
    prefix: API_PREFIX,
    queue: options.queue,
    hub,
    root,
    policy: { allowPrivateNetworks: options.allowPrivateNetworks ?? false, resolve: options.resolve },
    trackStream: (end) => {
      streams.add(end);
      return () => streams.delete(end);
    },
  });

  // Everything registered in this scope is open without the token: the page (which then asks for it) and the docs.
  await app.register(async (open) => {
    markRoutesPublic(open);
    await open.register(fastifySwaggerUi, { routePrefix: "/docs" });
    const webRoot = options.webRoot ?? findWebRoot();
    if (webRoot) {
      await open.register(fastifyStatic, {
        root: webRoot,
        wildcard: false,
        setHeaders: (res) => {
          res.setHeader("content-security-policy", PAGE_CSP);
          res.setHeader("x-content-type-options", "nosniff");
        },
      });
    } else {
      open.get("/", { schema: { hide: true } }, async (_request, reply) =>
        reply
          .code(503)
          .type("text/plain; charset=utf-8")
          .send("The web page is not built: run `npm run build`. The API is under /api/v1/download_queue/."),
      );
    }
  });
  return app;
}

const STATUS_OF_CODE: Record<string, number> = {
  DLQ_ERR_UNKNOWN_JOB_ID: 404,
  DLQ_ERR_INVALID_JOB_ID: 404,
  DLQ_ERR_QUEUE_STOPPED: 503,
  // The shared queue's Redis is down: the request may succeed once it is back.
  DLQ_ERR_REDIS_UNAVAILABLE: 503,
  DLQ_ERR_SECRET_REQUIRED: 400,
  DLQ_ERR_HF_REPO_NOT_FOUND: 404,
  DLQ_ERR_HF_REVISION_NOT_FOUND: 404,
  DLQ_ERR_HF_ENTRY_NOT_FOUND: 404,
  DLQ_ERR_CIVITAI_NOT_FOUND: 404,
  DLQ_ERR_HF_ACCESS_DENIED: 403,
  DLQ_ERR_CIVITAI_ACCESS_DENIED: 403,
  // The hub answered something that is not its API: the client's request was fine.
  DLQ_ERR_BAD_API_RESPONSE: 502,
};

/** The page loads only its own files and talks only to this server. */
const PAGE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** dist/web next to dist/server when running the build, or the build's when running the sources (tsx). */
function findWebRoot(): string | undefined {
  const here = dirname(fileURLToPath(import.meta.url));
  return [join(here, "../web"), join(here, "../../dist/web")].find((dir) => existsSync(join(dir, "index.html")));
}

function describeHttpError(error: FastifyError): string {
  switch (error.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return `The request body is too large: ${error.message}.`;
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return `${error.message}: send the body as application/json.`;
    default:
      return error.message;
  }
}
