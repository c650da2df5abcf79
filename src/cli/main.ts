#!/usr/bin/env node
/** The `dlqueue` command. Exit status: 0 all done, 1 some downloads failed, 2 bad usage, 128+n on signal n. */
import { constants } from "node:os";
import { Command, CommanderError } from "commander";
import { VERSION } from "../version.js";
import { addGetCommand, addResumeCommand } from "./get-command.js";
import { outputClosed } from "./output.js";
import { addServeCommand } from "./serve.js";
import { addWorkerCommand } from "./worker-command.js";

const program = new Command("dlqueue")
  .description("A download queue for very large files (AI model weights): parallel, prioritized, resumable.")
  .version(VERSION)
  // Usage errors must exit 2, not commander's 1; settings set here are inherited by the subcommands.
  .exitOverride()
  .showHelpAfterError("(add --help for usage)");
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
