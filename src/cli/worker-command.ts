/**
 * `dlqueue worker` as commander sees it: its options and help. What runs it (BullMQ, the engine) is in worker.ts,
 * loaded when it runs.
 */
import type { Command } from "commander";
import { CA_CERTIFICATE_HELP } from "./get-command.js";
import { integerArgument } from "./numbers.js";

export interface WorkerCliOptions {
  redis?: string;
  queue?: string;
  root: string;
  maxParallel: number;
  connections?: number;
  /** commander's `--no-fsync`: false when given. */
  fsync: boolean;
  lockDuration?: number;
  allowPrivateNetworks?: boolean;
  /** A PEM file of CAs to trust besides Node's. */
  caCertificate?: string;
  quiet?: boolean;
}

const HELP = `
Takes jobs from the queue that \`dlqueue serve --redis URL\` nodes put them in,
and downloads each into --root; give every worker and API node the same
--redis and --queue. DLQUEUE_SECRET (the same value everywhere) lets jobs
carry their own tokens; HF_TOKEN and CIVITAI_TOKEN are this worker's own.

Sources and redirects to private, loopback and link-local addresses are
refused unless --allow-private-networks: the jobs come from network clients.

Prints a line as each job starts and ends (--quiet: only failures). Stops on
Ctrl-C or SIGTERM: its running jobs go back to the queue with their partial
files, for any worker to resume; a second Ctrl-C quits at once. Exit status
0 after a clean stop, 2 for bad usage.`;

export function addWorkerCommand(program: Command): Command {
  return program
    .command("worker")
    .description("Download the jobs of a queue shared through Redis, which `dlqueue serve --redis` nodes fill.")
    .option("--redis <url>", "the shared queue's Redis: redis://[:password@]host:6379[/db] (rediss:// for TLS)")
    .option("--queue <name>", "the queue's name on that Redis (default: dlqueue)")
    .option("--root <dir>", "folder every download goes into (created if missing)", "./downloads")
    .option("-j, --max-parallel <n>", "jobs running at once", integerArgument(1), 5)
    .option(
      "-x, --connections <n>",
      "connections per file of 8 MiB or more, when the server serves ranges (aria2's -x; default: up to 4 for files of 64 MiB or more while -j has idle slots)",
      integerArgument(1),
    )
    .option("--no-fsync", "do not flush large files to the disk before they are moved into place (faster)")
    .option(
      "--lock-duration <ms>",
      "a job whose worker stops renewing its lock for this long goes to another worker (default: 30000)",
      integerArgument(1000),
    )
    .option("--allow-private-networks", "let jobs download from private, loopback and link-local addresses")
    .option("--ca-certificate <file>", CA_CERTIFICATE_HELP)
    .option("-q, --quiet", "print only failures")
    .addHelpText("after", HELP)
    .action(async (options: WorkerCliOptions, command: Command) => {
      const { runWorker } = await import("./worker.js");
      process.exitCode = await runWorker(options, command);
    });
}
