/** What `dlqueue worker` runs: the jobs of a queue shared through Redis (what `serve --redis` nodes queue), downloaded. */
import { resolve } from "node:path";
import { debuglog } from "node:util";
import { type Command, InvalidArgumentError as CommanderArgumentError } from "commander";
import { DlqError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { DownloadWorker } from "../redis/index.js";
import { formatBytes, formatDuration } from "../units.js";
import { readCaOption } from "./ca-file.js";
import { tokenRulesFromEnv } from "./env.js";
import type { WorkerCliOptions } from "./worker-command.js";

/** How long start() may wait for Redis before the worker says it is waiting. */
const REDIS_PATIENCE_MS = 3000;

export async function runWorker(options: WorkerCliOptions, command: Command): Promise<number> {
  const usage = (message: string): never => command.error(`error: ${message}`, { exitCode: 2, code: "dlqueue.usage" });
  if (options.redis === undefined) {
    usage("give the shared queue's Redis with --redis URL, e.g. --redis redis://127.0.0.1:6379.");
  }
  const redisUrl = options.redis as string;
  const quiet = options.quiet === true;
  const allowPrivateNetworks = options.allowPrivateNetworks === true;
  const root = resolve(options.root);
  // BullMQ and ioredis load only for the commands that use Redis: `get` and `--version` start without them.
  const [redis, { redisWhere }, { guardedDispatcher, redirectGuard }] = await Promise.all([
    import("../redis/index.js"),
    import("../redis/connection.js"),
    import("../server/ssrf.js"),
  ]);
  let secret: string | undefined;
  try {
    secret = redis.secretFromEnv();
  } catch (err) {
    if (!(err instanceof DlqError || err instanceof CommanderArgumentError)) throw err;
    return usage(err.message);
  }
  const ca = await readCaOption(options.caCertificate, usage);

  const say = (line: string) => process.stdout.write(`${line}\n`);
  const complain = (line: string) => process.stderr.write(`${line}\n`);
  const debug = debuglog("dlqueue");
  const logger: Logger = {
    debug: (message) => debug("%s", message),
    info: (message) => debug("%s", message),
    // Under --quiet, only the worker's own troubles (Redis, its state); the engine's retries end in a job's line.
    warn: (message) =>
      quiet && !message.startsWith("worker:") ? debug("%s", message) : complain(`dlqueue worker: warning: ${message}`),
    // The engine logs each failed job as an error; the failure's line below says it with the shared job's id.
    error: (message) => debug("%s", message),
  };

  const dispatcher = allowPrivateNetworks ? undefined : guardedDispatcher(undefined, ca);
  let worker: DownloadWorker;
  try {
    worker = new redis.DownloadWorker({
      redis: redisUrl,
      queueName: options.queue,
      secret,
      logger,
      root,
      concurrency: options.maxParallel,
      lockDurationMs: options.lockDuration,
      queueOptions: {
        connectionsPerFile: options.connections,
        fsync: options.fsync,
        tokens: tokenRulesFromEnv(process.env),
        logger,
        checkRedirect: redirectGuard({ allowPrivateNetworks }),
        dispatcher,
        ca,
      },
    });
  } catch (err) {
    await dispatcher?.close();
    if (!(err instanceof DlqError)) throw err;
    return usage(err.message);
  }
  reportJobs(worker, quiet ? undefined : say, complain);

  const signalled = new Promise<NodeJS.Signals>((done) => {
    const onSignal = (received: NodeJS.Signals) => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      done(received);
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  });
  // start() waits while Redis is down (the worker warns meanwhile), so a signal may come first.
  const started = worker.start().then(
    () => "started" as const,
    (err: Error) => err,
  );
  // The worker says nothing while it waits; a silent command would look hung.
  const waiting = setTimeout(
    () => complain(`dlqueue worker: waiting for Redis at ${redisWhere(redisUrl)}; jobs are taken once it answers`),
    REDIS_PATIENCE_MS,
  );
  let signal = await Promise.race([started, signalled]);
  clearTimeout(waiting);
  if (signal instanceof Error) {
    await worker.close();
    await dispatcher?.close();
    const code = (signal as NodeJS.ErrnoException).code;
    if (code !== undefined) return usage(`cannot write into --root ${root}: ${signal.message}`);
    complain(`dlqueue worker: error: could not start: ${signal.message}`);
    return 1;
  }
  if (signal === "started") {
    if (!quiet) {
      say(
        `dlqueue worker: taking jobs from queue "${options.queue ?? redis.DEFAULT_QUEUE_NAME}" on Redis ` +
          `${redisWhere(redisUrl)}, ${options.maxParallel} at once (-j); downloads go to ${root}; ` +
          `private networks: ${allowPrivateNetworks ? "allowed" : "refused"}`,
      );
    }
    signal = await signalled;
  }
  // A second signal while shutting down quits at once; partial files are already on disk.
  const force = () => process.exit(signal === "SIGINT" ? 130 : 143);
  process.once("SIGINT", force);
  process.once("SIGTERM", force);
  if (!quiet)
    complain(`dlqueue worker: ${signal}, stopping; running jobs go back to the queue with their partial files`);
  await worker.close();
  await dispatcher?.close();
  process.off("SIGINT", force);
  process.off("SIGTERM", force);
  return 0;
}

/**
 * One line per job as it starts and ends, for a log: `say` undefined (--quiet) leaves only failures. Each names the
 * shared job's id, which the API nodes' job list and events use too.
 */
function reportJobs(
  worker: DownloadWorker,
  say: ((line: string) => void) | undefined,
  complain: (line: string) => void,
) {
  const startedAt = new Map<number, number>();
  const ended = (id: number) => {
    const since = startedAt.get(id);
    startedAt.delete(id);
    return since === undefined ? "" : ` in ${formatDuration((performance.now() - since) / 1000)}`;
  };
  // `error` is the stack, as InvokeAI's traceback: its first line names the error and says what happened.
  worker.on("download_error", ({ id, source, error_type, error }) =>
    complain(`job ${id} ${source}: failed${ended(id)}: ${error.split("\n")[0] || error_type}`),
  );
  if (!say) return;
  worker.on("download_started", ({ id, source, download_path }) => {
    startedAt.set(id, performance.now());
    say(`job ${id} ${download_path}: started from ${source}`);
  });
  worker.on("download_complete", ({ id, download_path, total_bytes }) =>
    say(`job ${id} ${download_path}: done, ${formatBytes(total_bytes)}${ended(id)}`),
  );
  worker.on("download_cancelled", ({ id, source }) => say(`job ${id} ${source}: cancelled${ended(id)}`));
  worker.on("download_paused", ({ id, source, download_path, current_bytes, total_bytes }) => {
    const amount =
      total_bytes > 0 ? `${formatBytes(current_bytes)} of ${formatBytes(total_bytes)}` : formatBytes(current_bytes);
    say(`job ${id} ${download_path ?? source}: paused at ${amount}${ended(id)}`);
  });
}
