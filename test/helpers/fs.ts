import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import type { TestContext } from "node:test";

/** A fresh folder removed when the test ends. */
export async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "dlq-test-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

export async function fileSha256(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Every file below `dir`, relative, sorted: what a download left behind. */
export async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

/** A tiny filesystem of its own, to fill up for real; undefined where this machine does not allow mounts. */
export async function smallTmpfs(t: TestContext, bytes: number): Promise<string | undefined> {
  const dir = await mkdtemp(join(tmpdir(), "dlq-tmpfs-"));
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${bytes}`, "tmpfs", dir], { stdio: "ignore" });
  } catch {
    await rm(dir, { recursive: true, force: true });
    return undefined;
  }
  t.after(async () => {
    execFileSync("umount", [dir], { stdio: "ignore" });
    await rm(dir, { recursive: true, force: true });
  });
  return dir;
}

/** A logger that keeps every line, so tests can assert what was (and was not) logged. */
export function memoryLogger() {
  const lines: string[] = [];
  const keep = (level: string) => (message: string) => {
    lines.push(`${level}: ${message}`);
  };
  return { lines, logger: { debug: keep("debug"), info: keep("info"), warn: keep("warn"), error: keep("error") } };
}
