#!/usr/bin/env node
/** The `dlqueue` command. Exit status: 0 all done, 1 some downloads failed, 2 bad usage, 128+n on signal n. */
import module from "node:module";
import { constants } from "node:os";
import { Command, CommanderError } from "commander";
import { VERSION } from "../version.js";
import { addGetCommand, addResumeCommand } from "./get-command.js";
import { outputClosed } from "./output.js";
import { addServeCommand } from "./serve-command.js";
import { addWorkerCommand } from "./worker-command.js";

// Node 22.1+ keeps compiled code of the modules between runs (in the system's temp folder): a shorter start for
// every run after the first. Node 20 has no such cache.
(module as { enableCompileCache?: () => unknown }).enableCompileCache?.();

const program = new Command("dlqueue")
  .description("A download queue for very large files (AI model weights): parallel, prioritized, resumable.")
  .version(VERSION)
  // Usage errors must exit 2, not commander's 1; settings set here are inherited by the subcommands.
  .exitOverride()
  .showHelpAfterError("(add --help for usage)")
  // undici parses HTTP with llhttp, in WebAssembly. V8 compiles it once with its baseline compiler and again with
  // TurboFan on a background thread that the process waits for when it exits: 0.2 s of a 1 KB `get`, and ~25 MB of
  // peak memory. The baseline code is no slower here (the parser only frames the body): 2 GiB took 1.2 s of user
  // CPU with it against 1.4 s, and peaked at 100 MB against 128 MB. Set before a command's first connection compiles
  // the parser; node:v8 loads only then, as `--version` and `--help` have no use for its 5 ms.
  .hook("preAction", async () => {
    const { setFlagsFromString } = await import("node:v8");
    setFlagsFromString("--liftoff-only");
  });
addGetCommand(program);
addResumeCommand(program);
addServeCommand(program);
addWorkerCommand(program);

// A reader that stops early (`dlqueue get URL | head -2`, `dlqueue help get | head`) closes the pipe: the next write
// fails with EPIPE, which would otherwise crash with a stack trace and leave the downloads' locks behind. A running
// `get` stops as on Ctrl-C; anything else ends at once, with the status a shell gives a command killed by SIGPIPE.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code !== "EPIPE" && err.code !== "ERR_STREAM_DESTROYED") throw err;
    if (!outputClosed()) process.exit(128 + constants.signals.SIGPIPE);
  });
}

let code: number;
try {
  await program.parseAsync();
  code = Number(process.exitCode ?? 0);
} catch (err) {
  if (err instanceof CommanderError) {
    // Help and --version end in a CommanderError too, with exit code 0.
    code = err.exitCode === 0 ? 0 : 2;
  } else {
    process.stderr.write(`dlqueue: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : err}\n`);
    code = 1;
  }
}
// Piped output is written asynchronously; exiting before it drains would cut the last JSON lines.
await Promise.all(
  [process.stdout, process.stderr].map((stream) =>
    stream.destroyed ? undefined : new Promise((done) => stream.write("", done)),
  ),
);
process.exit(code);
