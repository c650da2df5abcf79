/**
 * Who may talk to the service. With an auth token, every route needs `Authorization: Bearer <token>` (or `?token=`
 * on the event stream, which browsers open without headers) unless it is marked public (the page's files and the
 * docs). Access is decided on the route the router matched, never on the URL as sent: the router decodes `%61pi`,
 * so a check on the raw string can be walked around. Without one the service is reachable
 * from this machine only, and two browser attacks on such local services are shut out: DNS rebinding (a web page
 * whose host name now resolves to 127.0.0.1; its requests carry that foreign name in Host) and cross-site requests
 * (a page elsewhere posting to 127.0.0.1; its requests carry a foreign Origin).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";

export interface AccessOptions {
  authToken: string | undefined;
  /** The one other origin whose pages may call the API (CORS), e.g. "http://localhost:5173". */
  cors: string | undefined;
}

/** A route's `config`: what it lets through without the Authorization header. */
export interface AccessConfig {
  /** Anyone may fetch it: the page's files, the docs, the CORS preflight. */
  public?: boolean;
  /** Also takes the token as `?token=` (the event stream: EventSource cannot send headers). */
  queryToken?: boolean;
}

declare module "fastify" {
  interface FastifyContextConfig extends AccessConfig {}
}

/** Marks every route registered in `scope` (and its children) public; call before registering them. */
export function markRoutesPublic(scope: FastifyInstance): void {
  scope.addHook("onRoute", (route) => {
    route.config = { ...route.config, public: true };
  });
}

/** The credentials of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110, 11.1). */
export function bearerToken(header: string | undefined): string | undefined {
  return header === undefined ? undefined : /^bearer +([^ ]+) *$/i.exec(header)?.[1];
}

/** True for names that only ever reach this machine. */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, "").toLowerCase();
  if (bare === "localhost" || bare.endsWith(".localhost")) return true;
  if (isIP(bare) === 4) return bare.startsWith("127.");
  return bare === "::1";
}

/** Compares digests, so neither the token's content nor its length leaks through timing. */
export function tokenMatches(given: string | undefined, expected: string): boolean {
  if (given === undefined) return false;
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

export function installAccessControl(app: FastifyInstance, options: AccessOptions): void {
  const { authToken, cors } = options;
  app.addHook("onRequest", async (request, reply) => {
    const origin = request.headers.origin;
    if (cors && origin === cors) {
      reply.header("access-control-allow-origin", cors);
      reply.header("access-control-expose-headers", "x-last-event-id");
      reply.header("vary", "Origin");
    }
    if (!authToken && !isLoopbackHost(hostName(request.headers.host ?? ""))) {
      return refuse(
        reply,
        403,
        `This server has no --auth-token, so it answers only to localhost, 127.0.0.1 and [::1], not to the host ` +
          `name ${JSON.stringify(request.headers.host ?? "")} (a guard against DNS rebinding). ` +
          "Open it through one of those, or restart it with --auth-token.",
      );
    }
    const unsafe = request.method !== "GET" && request.method !== "HEAD" && request.method !== "OPTIONS";
    if (unsafe && origin !== undefined && origin !== cors && origin !== ownOrigin(request)) {
      return refuse(
        reply,
        403,
        `Cross-origin request from ${origin} refused; start the server with --cors ${origin} to allow that page.`,
      );
    }
    // A path no route matched gets the not-found answer, which carries nothing but the path the client sent.
    const access: AccessConfig = request.routeOptions.config;
    if (!authToken || access.public || request.is404) return;
    const header = request.headers.authorization;
    const queryValue = access.queryToken ? (request.query as { token?: unknown } | undefined)?.token : undefined;
    const query = typeof queryValue === "string" ? queryValue : undefined;
    if (!tokenMatches(bearerToken(header) ?? query, authToken)) {
      reply.header("www-authenticate", 'Bearer realm="dlqueue"');
      const why = header === undefined && query === undefined ? "no credentials were sent" : "the token is wrong";
      return refuse(
        reply,
        401,
        `Authentication required (${why}): send "Authorization: Bearer <token>" with the --auth-token the ` +
          `server was started with${access.queryToken ? ", or add ?token=<token> to this URL" : ""}.`,
      );
    }
  });
  if (cors) {
    // The preflight browsers send before a cross-origin PATCH, DELETE, or JSON POST.
    app.options("/*", { schema: { hide: true }, config: { public: true } }, async (request, reply) => {
      if (request.headers.origin !== cors) {
        return refuse(reply, 403, `Only ${cors} may call this API from a browser (--cors).`);
      }
      reply
        .header("access-control-allow-methods", "GET, POST, PATCH, DELETE")
        .header("access-control-allow-headers", "Authorization, Content-Type, Last-Event-ID")
        .header("access-control-max-age", "600")
        .code(204)
        .send();
    });
  }
}

function refuse(reply: FastifyReply, status: number, detail: string): FastifyReply {
  return reply.code(status).send({ detail });
}

function hostName(host: string): string {
  // "[::1]:8080" → "[::1]", "localhost:8080" → "localhost".
  return host.startsWith("[") ? host.slice(0, host.indexOf("]") + 1) : (host.split(":")[0] ?? "");
}

function ownOrigin(request: FastifyRequest): string {
  return `${request.protocol}://${request.headers.host ?? ""}`;
}
