import { DlqError } from "../errors.js";

/**
 * --ca-certificate's file, read as a command starts, so a wrong path is a usage error before anything is fetched.
 * validate.js (and with it undici's dispatchers) loads only here, for a command that runs, never for --help.
 */
export async function readCaOption(
  path: string | undefined,
  usage: (message: string) => never,
): Promise<string | undefined> {
  if (path === undefined) return undefined;
  const { readCaFile } = await import("../validate.js");
  try {
    return readCaFile(path);
  } catch (err) {
    if (err instanceof DlqError) usage(`--ca-certificate: ${err.message}`);
    throw err;
  }
}
