/**
 * `--input-file` lists, in the spirit of aria2's input files: one URL per line, its options either on the same line
 * (`URL dest=models/ sha256=…`) or on the indented lines that follow it (` dest=models/x.safetensors`).
 */
import { readFile } from "node:fs/promises";
import { NumberSyntaxError, parseNumber, parseRate } from "./numbers.js";

export interface InputEntry {
  url: string;
  dest?: string;
  sha256?: string;
  priority?: number;
  /** `limit-rate=`: this download's own limit, in bytes per second. */
  maxBytesPerSecond?: number;
  /** hf:// sources: `include=` / `exclude=` globs, each repeatable. */
  include?: string[];
  exclude?: string[];
  /** 1-based, for messages that point at the line to fix. */
  line: number;
}

export const INPUT_FILE_HELP = `Input file (-i FILE, or -i - for stdin):
  One URL per line. Options for a URL go on the same line after it, or on
  the indented lines that follow it (aria2's layout); blank lines and lines
  starting with # are ignored.

    # same line
    https://example.com/a.safetensors dest=models/ sha256=<64 hex> priority=1
    # indented lines (use this form for paths with spaces)
    https://example.com/b.ckpt
      dest=my models/b.ckpt
      sha256=<64 hex>

  dest=        a folder (existing, or ending in /) or a file name; relative
               paths are taken relative to -d (default: the current folder)
  sha256=      expected checksum; a mismatch fails the download, removes it
  priority=    lower runs first (default: -p, else 10)
  limit-rate=  this download's own rate limit, spelled as for --limit-rate
               (500k, 2M); --limit-rate still caps all downloads together
  include=     hf:// sources: only the repo files matching this glob;
  exclude=     or leave them out; each repeatable, replacing --include /
               --exclude for that line

  hf://ORG/REPO and Civitai sources may be listed among the URLs; dest= is
  then the folder the model's files go into.`;

/** A mistake in the list itself; the message names the line. */
export class InputFileError extends Error {
  override name = "InputFileError";
}

const KEYS = new Set(["dest", "sha256", "priority", "limit-rate", "include", "exclude"]);

export function parseInputFile(text: string, fileName: string): InputEntry[] {
  const entries: InputEntry[] = [];
  const lines = text.split(/\r?\n/);
  for (const [index, raw] of lines.entries()) {
    const lineNo = index + 1;
    const where = `${fileName}:${lineNo}`;
    const line = raw.trimEnd();
    const content = line.trimStart();
    if (content === "" || content.startsWith("#")) continue;
    if (content !== line) {
      const current = entries.at(-1);
      if (!current) throw new InputFileError(`${where}: an indented option line must follow a URL line.`);
      setOption(current, content, where);
      continue;
    }
    const [url = "", ...options] = content.split(/\s+/);
    const entry: InputEntry = { url, line: lineNo };
    for (const option of options) setOption(entry, option, where);
    entries.push(entry);
  }
  return entries;
}

function setOption(entry: InputEntry, option: string, where: string): void {
  const eq = option.indexOf("=");
  const key = eq > 0 ? option.slice(0, eq).trim() : "";
  const value = option.slice(eq + 1).trim();
  if (!KEYS.has(key)) {
    throw new InputFileError(
      eq > 0
        ? `${where}: unknown option "${key}"; the options are dest=, sha256=, priority=, limit-rate=, include= and exclude=.`
        : `${where}: expected key=value after the URL, got "${option}" (one URL per line).`,
    );
  }
  if (key === "include" || key === "exclude") {
    if (value === "") throw new InputFileError(`${where}: ${key}= needs a pattern, as *.safetensors.`);
    entry[key] = [...(entry[key] ?? []), value];
    return;
  }
  const field = key === "limit-rate" ? "maxBytesPerSecond" : (key as keyof InputEntry);
  if (entry[field] !== undefined) throw new InputFileError(`${where}: ${key}= is given twice.`);
  if (key === "dest") {
    if (value === "") throw new InputFileError(`${where}: dest= needs a folder or file name.`);
    entry.dest = value;
  } else if (key === "sha256") {
    if (!/^[0-9a-f]{64}$/i.test(value))
      throw new InputFileError(`${where}: sha256= must be 64 hexadecimal characters.`);
    entry.sha256 = value;
  } else {
    try {
      if (key === "priority") entry.priority = parseNumber(value, { integer: true });
      else entry.maxBytesPerSecond = parseRate(value);
    } catch (err) {
      if (err instanceof NumberSyntaxError) throw new InputFileError(`${where}: ${key}=: ${err.message}`);
      throw err;
    }
  }
}

/** Reads the list from a file, or from stdin for `-`. */
export async function readInputFile(path: string): Promise<string> {
  if (path !== "-") return readFile(path, "utf8");
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}
