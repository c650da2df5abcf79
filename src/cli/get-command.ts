/**
 * The `get` and `resume` commands as commander sees them: their options and help. What
 * runs them (the queue, undici, the bars) is in get.ts, loaded when one of them runs, so `--version`, `--help` and
 * the other commands start without it.
 */
import type { Command } from "commander";
import { INPUT_FILE_HELP } from "./input-file.js";
import { integerArgument, rateArgument, secondsArgument } from "./numbers.js";

export interface GetOptions {
  /** Always a folder: the arguments' files go into it, and input-file dest= paths are relative to it. */
  dest?: string;
  /** For one URL: the exact file to write (relative to dest when given). */
  output?: string;
  maxParallel?: number;
  priority?: number;
  inputFile?: string;
  token?: string;
  header?: string[];
  sha256?: string;
  retries?: number;
  connections?: number;
  /** commander's `--no-fsync`: false when given. */
  fsync?: boolean;
  /** Bytes per second for all downloads together. */
  limitRate?: number;
  proxy?: string;
  /** A PEM file of CAs to trust besides Node's. */
  caCertificate?: string;
  /** Seconds for a connection, for response headers, and for a body that sends nothing. */
  timeout?: number;
  /** Seconds before the first retry. */
  retryDelay?: number;
  overwrite?: boolean;
  json?: boolean;
  quiet?: boolean;
  /** A durable queue file: jobs a killed run left unfinished are resumed, and this run's jobs are recorded. */
  state?: string;
  /** `--default-state`: the state file at defaultStatePath(). */
  defaultState?: boolean;
  /** `dlqueue resume`: no new URLs, only what the state file holds. */
  resumeOnly?: boolean;
  /** hf:// sources: huggingface_hub's allow_patterns / ignore_patterns. */
  include?: string[];
  exclude?: string[];
  /** Civitai sources: every file of the version, not only the primary one. */
  allFiles?: boolean;
}

const DEFAULT_STATE_HELP = "$XDG_STATE_HOME/dlqueue/queue.db";

/** `--ca-certificate`'s line, the same in every command (wget's and aria2c's name). */
export const CA_CERTIFICATE_HELP =
  "also trust the CAs in this PEM file, as NODE_EXTRA_CA_CERTS does (a corporate TLS proxy's, a private mirror's)";

const HELP = `
Models:
  hf://ORG/REPO[@REVISION][/PATH]   a Hugging Face repo (or one file or folder
                                    of it); hf://datasets/… and hf://spaces/…
  civitai://models/ID[@VERSION]     a Civitai model version, or its page URL
                                    https://civitai.com/models/ID?modelVersionId=V
  Without -d, an hf:// model goes into the Hugging Face cache ($HF_HUB_CACHE,
  else $HF_HOME/hub, else ~/.cache/huggingface/hub), where diffusers,
  transformers and InvokeAI find it; with -d DIR, the repo's tree goes under
  DIR. A Civitai model goes into -d, else the current folder. --include and
  --exclude pick repo files by glob (repeatable); --all-files takes every file
  of a Civitai version, not only its primary one. Every file is checked
  against the hub's sha256. When a model is complete, its folder (the
  snapshot folder in the cache) is printed on stdout, one line per model and
  last, so \`dir=$(dlqueue get -q hf://ORG/REPO)\` gives it. HF_TOKEN (or the
  token file \`hf auth login\` writes) goes only to the hub, CIVITAI_TOKEN only
  to Civitai.

${INPUT_FILE_HELP}

Where files go:
  -d DIR is always a folder (created if missing); each file takes the name
  the server gives it, else the URL's. -o FILE writes the one URL to exactly
  FILE (relative to -d when both are given). A file already complete at its
  path is not fetched again and counts as completed; --overwrite fetches it.

Network:
  --limit-rate takes bytes per second, or k, M, G as wget and curl count them
  (1024-based: 500k is 512,000 B/s, 2M is 2,097,152 B/s, 1.5MB 1.5 x 1024²).
  Without --proxy, HTTPS_PROXY, HTTP_PROXY and NO_PROXY (or their lowercase
  forms) are honoured. --timeout bounds connecting, waiting for the response
  headers, and a body that stops sending; each is then retried.

Access tokens:
  HF_TOKEN       sent to huggingface.co and its subdomains
  CIVITAI_TOKEN  sent to civitai.com and its subdomains
  --token T      sent to the URLs given as arguments (not those of -i),
                 instead of the above; for a model source, to its hub's
                 (or Civitai's) API only, as HF_TOKEN is
  A token goes only to the host of its URL, never to a host it redirects to,
  and is never printed.

Output:
  On a terminal: a bar per running download and a total line on stderr, then
  a summary table on stdout. When stdout is not a terminal (a log file, CI,
  docker build): plain lines on stdout as each download starts, passes each
  tenth (or every 30 s) and ends, then the table. With --json, stdout carries
  one JSON object per line instead, and nothing else (no bars on a terminal):
    {"event":"download_started","id":0,"source":"…","download_path":"…"}
    {"event":"download_progress","id":0,"source":"…","download_path":"…",
     "current_bytes":1024,"total_bytes":4096}
    {"event":"download_complete","id":0,"source":"…","download_path":"…",
     "total_bytes":4096}
    {"event":"download_error","id":0,"source":"…","error_type":"…","error":"…"}
    {"event":"job","job":{"source":"…","dest":"…","id":0,"priority":10,
     "status":"completed","download_path":"…","bytes":4096,…}}
  A "job" line comes once per download when it ends, and on Ctrl-C for each
  unfinished one (status "waiting"). Failures always go to stderr too.
  --quiet shows only errors, and one line if retries go on for long.

Resuming:
  Data is written to <file>.downloading and renamed when complete. Ctrl-C
  keeps those partial files; run the same command again to resume them.
  --state FILE also records the queue in FILE (--default-state: in
  ${DEFAULT_STATE_HELP}), so \`dlqueue resume --state FILE\`
  finishes it after a kill.

Exit status:
  0 all downloads completed, 1 some failed, 2 bad usage,
  130 interrupted by Ctrl-C (143 by SIGTERM, 141 when stdout was closed).`;

/** Options `get` and `resume` share: they set up the queue rather than its jobs. */
function addQueueOptions(command: Command): Command {
  return command
    .option("-j, --max-parallel <n>", "downloads running at once (default: 5)", integerArgument(1))
    .option(
      "--retries <n>",
      "retries of an interrupted transfer, each resuming where it stopped (default: 5)",
      integerArgument(0),
    )
    .option(
      "--retry-delay <seconds>",
      "wait before the first retry; it doubles at each (default: 1)",
      secondsArgument(0),
    )
    .option(
      "--timeout <seconds>",
      "give up connecting, waiting for headers, or on a body that stops sending after this long, and retry " +
        "(default: 30 to connect, 60 for the others)",
      secondsArgument(0, true),
    )
    .option(
      "--limit-rate <rate>",
      "at most RATE bytes per second for all downloads together: 500k, 2M (k = 1024)",
      rateArgument,
    )
    .option("--proxy <url>", "send every request through this HTTP proxy (default: HTTPS_PROXY / HTTP_PROXY)")
    .option("--ca-certificate <file>", CA_CERTIFICATE_HELP)
    .option(
      "-x, --connections <n>",
      "connections per file of 8 MiB or more, when the server serves ranges (aria2's -x; default: up to 4 for files of 64 MiB or more while -j has idle slots)",
      integerArgument(1),
    )
    .option(
      "--no-fsync",
      "do not flush large files to the disk before they are moved into place (faster; a power cut may then " +
        "leave a damaged file)",
    )
    .option("--json", "print JSON lines on stdout, and nothing else there")
    .option("-q, --quiet", "no bars, no table, no progress lines: only errors (and JSON lines with --json)");
}

export function addGetCommand(program: Command): Command {
  const command = program
    .command("get")
    .description("Download URLs in parallel, resuming whatever an earlier run left unfinished.")
    .argument("[url...]", "http:// or https:// URLs, hf:// and civitai:// models (below) to download")
    .option("-d, --dest <dir>", "the folder to write into, created if missing (default: the current folder)")
    .option("-o, --output <file>", "for one URL: the file to write, relative to -d when given")
    .option("-p, --priority <n>", "priority of the downloads; lower runs first (default: 10)", integerArgument())
    .option("-i, --input-file <file>", "also download the URLs listed in <file> (- for stdin); format below")
    .option("--token <token>", "access token for the URLs given as arguments (sent as a Bearer token)")
    .option("--header <header>", 'extra request header "Name: value"; repeatable', collect)
    .option("--sha256 <hex>", "expected sha256 of the one URL given as argument")
    .option("--overwrite", "fetch a file again even when it is already complete at its path")
    .option(
      "--include <glob>",
      "hf:// sources: only the repo files matching GLOB (as *.safetensors); repeatable",
      collect,
    )
    .option("--exclude <glob>", "hf:// sources: leave out the repo files matching GLOB; repeatable", collect)
    .option("--all-files", "Civitai sources: every file of the model version, not only its primary file");
  return addQueueOptions(command)
    .option(
      "--state <file>",
      "keep the queue in this state file, so `dlqueue resume --state <file>` finishes what a killed run left",
    )
    .option("--default-state", `as --state, with the file ${DEFAULT_STATE_HELP}`)
    .addHelpText("after", HELP)
    .action(async (urls: string[], options: GetOptions, command: Command) => {
      const { runGet } = await import("./get.js");
      process.exitCode = await runGet(urls, options, command);
    });
}

export function addResumeCommand(program: Command): Command {
  const command = program
    .command("resume")
    .description("Finish the downloads a stopped or killed `dlqueue get --state` left unfinished.")
    .option("--state <file>", `the state file \`get --state\` wrote (default: ${DEFAULT_STATE_HELP})`);
  return addQueueOptions(command).action(async (options: GetOptions, command: Command) => {
    const { runGet } = await import("./get.js");
    process.exitCode = await runGet(
      [],
      { ...options, defaultState: options.state === undefined, resumeOnly: true },
      command,
    );
  });
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}
