/** `dlqueue serve`: the queue as a local service, with InvokeAI's download_queue API, live events and a web page. */
import { resolve } from "node:path";
import { type Command, InvalidArgumentError as CommanderArgumentError } from "commander";
import { DlqError } from "../errors.js";
import { API_PREFIX } from "../server/prefix.js";
import { isLoopbackHost } from "../server/security.js";
import type { Service, SharedServiceOptions } from "../server/service.js";
import { readCaOption } from "./ca-file.js";
import type { ServeOptions } from "./serve-command.js";

export async function runServe(options: ServeOptions, command: Command): Promise<number> {
  const usage = (message: string): never => command.error(`error: ${message}`, { exitCode: 2, code: "dlqueue.usage" });
  const authToken = options.authToken?.trim() || undefined;
  if (!authToken && !isLoopbackHost(options.host)) {
    usage(
      `--host ${options.host} would let other machines reach the queue, so it needs --auth-token ` +
        "(or DLQUEUE_AUTH_TOKEN); without one, keep the default --host 127.0.0.1.",
    );
  }
  if (options.cors !== undefined && !/^https?:\/\/[^/]+$/.test(options.cors)) {
    usage(`--cors takes an origin such as "http://localhost:5173" (scheme, host, port; no path), not ${options.cors}.`);
  }
  if (options.queue !== undefined && options.redis === undefined) {
    usage("--queue names a queue on a shared Redis: add --redis URL.");
  }
  const shared = options.redis === undefined ? undefined : await sharedOptions(options, usage);
  if (options.maxParallel === 0 && !shared) {
    usage("-j 0 runs no downloads: that is an API node of a shared queue, so it needs --redis URL.");
  }
  const allowPrivateNetworks = options.allowPrivateNetworks === true;
  const root = resolve(options.root);
  // Fastify and its plugins load only for `serve`: `get` starts faster and smaller without them.
  const { createService, QueueSetupError } = await import("../server/service.js");
  const ca = await readCaOption(options.caCertificate, usage);
  let service: Service | undefined;
  try {
    service = await createService({
      root,
      authToken,
      allowPrivateNetworks,
      cors: options.cors,
      maxParallelDownloads: options.maxParallel,
      store: options.state === undefined ? undefined : resolve(options.state),
      shared,
      queueOptions: { ca },
    });
    await service.app.listen({ host: options.host, port: options.port });
  } catch (err) {
    if (err instanceof QueueSetupError) {
      return usage(shared ? `--redis: ${err.message}` : `cannot open --state ${options.state}: ${err.message}`);
    }
    await service?.close();
    const code = (err as NodeJS.ErrnoException).code;
    const hint =
      code === "EADDRINUSE"
        ? "; choose another --port"
        : code === "EADDRNOTAVAIL" || code === "ENOTFOUND"
          ? "; --host must be an address of this machine"
          : "";
    return usage(`cannot listen on ${options.host}:${options.port}: ${(err as Error).message}${hint}`);
  }

  const { app } = service;
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : options.port;
  const host = options.host.includes(":") ? `[${options.host}]` : options.host;
  // What protects the service, where its operator sees it first.
  const auth = authToken ? "token required" : "none, this machine only";
  const privateNetworks = allowPrivateNetworks ? "allowed" : "refused";
  process.stdout.write(
    `dlqueue serve: listening on http://${host}:${port}/ (auth: ${auth}; private networks: ${privateNetworks}); ` +
      `API ${API_PREFIX}/, docs /docs; downloads go to ${root}${shared ? await sharedSummary(shared, options) : ""}\n`,
  );

  const signal = await new Promise<NodeJS.Signals>((done) => {
    const onSignal = (received: NodeJS.Signals) => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      done(received);
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  });
  // A second signal while shutting down quits at once; partial files are already on disk.
  const force = () => process.exit(signal === "SIGINT" ? 130 : 143);
  process.once("SIGINT", force);
  process.once("SIGTERM", force);
  process.stderr.write(`dlqueue serve: ${signal}, stopping; unfinished downloads keep their partial files\n`);
  await service.close();
  process.off("SIGINT", force);
  process.off("SIGTERM", force);
  return 0;
}

/** --redis and --queue as createService() takes them, with DLQUEUE_SECRET; refuses what they cannot go with. */
async function sharedOptions(options: ServeOptions, usage: (message: string) => never): Promise<SharedServiceOptions> {
  if (options.state !== undefined) {
    usage("--state keeps jobs in a local file, --redis keeps them in Redis: give one of them, not both.");
  }
  const { secretFromEnv } = await import("../redis/secret.js");
  try {
    return { redis: options.redis as string, queueName: options.queue, secret: secretFromEnv() };
  } catch (err) {
    if (!(err instanceof DlqError || err instanceof CommanderArgumentError)) throw err;
    return usage(err.message);
  }
}

/** The start line's tail: which Redis (never its password) and queue, and whether this node downloads. */
async function sharedSummary(shared: SharedServiceOptions, options: ServeOptions): Promise<string> {
  // Loaded already by the service; imported here so this module does not load ioredis for every command.
  const [{ redisWhere }, { DEFAULT_QUEUE_NAME }] = await Promise.all([
    import("../redis/connection.js"),
    import("../redis/index.js"),
  ]);
  const worker =
    options.maxParallel === 0
      ? "API node only (-j 0), workers download"
      : `a worker here runs ${options.maxParallel ?? 5} at once (-j)`;
  return `; shared queue "${shared.queueName ?? DEFAULT_QUEUE_NAME}" on Redis ${redisWhere(shared.redis)}, ${worker}`;
}
