/** `dlqueue serve`: the queue as a local service, with InvokeAI's download_queue API, live events and a web page. */
import { resolve } from "node:path";
import { type Command, InvalidArgumentError as CommanderArgumentError, Option } from "commander";
import { DlqError } from "../errors.js";
import { API_PREFIX } from "../server/prefix.js";
import { isLoopbackHost } from "../server/security.js";
import type { Service, SharedServiceOptions } from "../server/service.js";
import { readCaOption } from "./ca-file.js";
import { CA_CERTIFICATE_HELP } from "./get-command.js";
import { integerArgument } from "./numbers.js";

export interface ServeOptions {
  host: string;
  port: number;
  root: string;
  authToken?: string;
  allowPrivateNetworks?: boolean;
  cors?: string;
  maxParallel?: number;
  state?: string;
  redis?: string;
  queue?: string;
  /** A PEM file of CAs to trust besides Node's. */
  caCertificate?: string;
}

const HELP = `
API (InvokeAI's download_queue router, plus pause/resume, multi-file jobs and events):
  GET    ${API_PREFIX}/             every job
  PATCH  ${API_PREFIX}/             forget finished jobs (204)
  POST   ${API_PREFIX}/i/           {"source","dest","priority"?,"access_token"?}
  GET    ${API_PREFIX}/i/{id}       one job (404 if unknown)
  DELETE ${API_PREFIX}/i/{id}       cancel (204/404)
  DELETE ${API_PREFIX}/i            cancel all (204)
  POST   ${API_PREFIX}/i/{id}/pause and /resume (204/404)
  POST   ${API_PREFIX}/multi/       {"parts":[{"url","path"}],"dest",...}
  GET    ${API_PREFIX}/events       Server-Sent Events, Last-Event-ID replay
  The web page is at /, the OpenAPI documentation at /docs.

Safety:
  Listens on 127.0.0.1 by default; any other --host needs --auth-token.
  With a token, the API wants "Authorization: Bearer <token>" (the event
  stream also takes ?token=); the page at / asks for it.
  Every dest is relative to --root; absolute paths, ".." and symbolic links
  out of it are refused. Sources and redirects to private, loopback and
  link-local addresses are refused unless --allow-private-networks.

Shared queue (--redis): jobs live in Redis, downloaded by this node's worker
(-j N, or none with -j 0) and by \`dlqueue worker\` processes; DLQUEUE_SECRET
(the same value everywhere) lets jobs carry their own tokens.

Stops on Ctrl-C or SIGTERM: running downloads keep their partial files (and,
with --state or --redis, come back and resume at the next start). Exit status
0 after a clean stop, 2 for bad usage or a port that cannot be used.`;

export function addServeCommand(program: Command): Command {
  return program
    .command("serve")
    .description("Run the queue as a service: InvokeAI's download_queue REST API, live events and a web page.")
    .option("--host <host>", "address to listen on; anything but loopback needs --auth-token", "127.0.0.1")
    .option("--port <n>", "port to listen on (0: any free port)", integerArgument(0, 65535), 9190)
    .option("--root <dir>", "folder every download goes into (created if missing)", "./downloads")
    .addOption(new Option("--auth-token <token>", "require this Bearer token on the API").env("DLQUEUE_AUTH_TOKEN"))
    .option("--allow-private-networks", "let clients download from private, loopback and link-local addresses")
    .option("--cors <origin>", 'let pages from this origin call the API, e.g. "http://localhost:5173"')
    .option("--ca-certificate <file>", CA_CERTIFICATE_HELP)
    .option(
      "-j, --max-parallel <n>",
      "downloads running at once (default: 5); with --redis, 0 makes this an API node that runs none",
      integerArgument(0),
    )
    .option("--state <file>", "keep jobs in this SQLite file, so they survive a restart and resume")
    .option("--redis <url>", "share the queue through this Redis with other nodes and `dlqueue worker`s")
    .option("--queue <name>", "with --redis: the queue's name on that Redis (default: dlqueue)")
    .addHelpText("after", HELP)
    .action(async (options: ServeOptions, command: Command) => {
      process.exitCode = await runServe(options, command);
    });
}

async function runServe(options: ServeOptions, command: Command): Promise<number> {
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
