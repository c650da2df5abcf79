import { debuglog } from "node:util";

/** The one way library code reports what it does; pass your own (pino, winston, console) as the `logger` option. */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

const debug = debuglog("dlqueue");

/** Quiet unless NODE_DEBUG=dlqueue, except warnings and errors, which go to stderr. */
export const defaultLogger: Logger = {
  // "%s" so a URL with a percent sign is not read as a format string.
  debug: (message) => debug("%s", message),
  info: (message) => debug("%s", message),
  warn: (message) => process.stderr.write(`dlqueue warning: ${message}\n`),
  error: (message) => process.stderr.write(`dlqueue error: ${message}\n`),
};

/** Hides every secret a job knows of, wherever text about it leaves the process. */
export function redact(text: string, secrets: readonly (string | undefined)[]): string {
  let out = text;
  for (const secret of secrets) if (secret) out = out.replaceAll(secret, "***");
  return out;
}
