/**
 * The `serve` command as commander sees it: its options and help. What runs it (Fastify, the queue, Redis when
 * asked) is in serve.ts, loaded when it runs, so `--version`, `--help` and the other commands start without it.
 */
import { type Command, Option } from "commander";
import { API_PREFIX } from "../server/prefix.js";
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
      const { runServe } = await import("./serve.js");
      process.exitCode = await runServe(options, command);
    });
}
