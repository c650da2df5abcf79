/** A workload's block in bench/results.md, between its own markers: replaced in place on a re-run, else appended. */
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";

export async function writeSection(dest: string, tag: string, section: string): Promise<void> {
  const begin = `<!-- ${tag}:begin -->`;
  const end = `<!-- ${tag}:end -->`;
  const before = existsSync(dest) ? await readFile(dest, "utf8") : "";
  const block = `${begin}\n${section}${end}`;
  const at = before.indexOf(begin);
  const stop = before.indexOf(end);
  const next =
    at >= 0 && stop > at
      ? `${before.slice(0, at)}${block}${before.slice(stop + end.length)}`
      : `${before.trimEnd()}${before ? "\n\n" : ""}${block}\n`;
  await writeFile(dest, next);
}
