// Runs one command under GNU time and checks what it left on disk.
import { spawn } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { sha256File } from "./data.js";

export interface Sample {
  wall: number;
  /** user + sys seconds of the whole process tree (GNU time reports waited-for descendants). */
  cpu: number;
  /** Peak resident set in MiB of the largest single process in the tree (getrusage semantics). */
  rssMiB: number;
}

export type Outcome = { ok: true; sample: Sample } | { ok: false; error: string };

/**
 * The harness's environment without NODE_EXTRA_CA_CERTS: a machine that sets it (this one points it at the system's
 * bundle) makes every Node process parse ~140 certificates at start, 0.05 s and 8 MB that a user's Node does not
 * pay, and curl or aria2c never do. Rows over TLS set it to the bench's CA where that is how their client trusts one.
 * Read at each spawn: bench/models.ts sets HF_ENDPOINT after this module has loaded.
 */
function cleanEnv(): NodeJS.ProcessEnv {
  const { NODE_EXTRA_CA_CERTS: _systemBundle, ...env } = process.env;
  return env;
}

/** `env` is added to the harness's clean environment; GNU time hands it on to the command. */
export async function measure(
  cmd: string[],
  timeFile: string,
  timeoutMs: number,
  env?: Record<string, string>,
): Promise<Outcome> {
  const started = performance.now();
  // Own process group, so a hung client can be killed with all its children.
  const proc = spawn("/usr/bin/time", ["-f", "%U %S %M", "-o", timeFile, ...cmd], {
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
    env: { ...cleanEnv(), ...env },
  });
  let output = "";
  const keep = (b: Buffer) => {
    output = (output + b.toString()).slice(-2000);
  };
  proc.stdout.on("data", keep);
  proc.stderr.on("data", keep);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    if (proc.pid) process.kill(-proc.pid, "SIGKILL");
  }, timeoutMs);
  const code = await new Promise<number | null>((resolve, reject) => {
    proc.once("error", reject);
    proc.once("close", resolve);
  });
  clearTimeout(timer);
  const wall = (performance.now() - started) / 1000;
  if (timedOut) return { ok: false, error: `timed out after ${timeoutMs / 1000} s` };
  // Node exits 13 when its event loop drains while a top-level await is still pending: nothing was left to do.
  const hint = code === 13 ? " (top-level await never settled)" : "";
  if (code !== 0) return { ok: false, error: `exit ${code}${hint}: ${errorSummary(output)}` };
  // GNU time's -o file ends with the format line; earlier lines note a non-zero exit or signal.
  const line = (await readFile(timeFile, "utf8")).trim().split("\n").at(-1) ?? "";
  const [user, sys, maxKB] = line.split(" ").map(Number);
  if (user === undefined || sys === undefined || maxKB === undefined || Number.isNaN(maxKB))
    return { ok: false, error: `unreadable GNU time output: ${line}` };
  return { ok: true, sample: { wall, cpu: user + sys, rssMiB: maxKB / 1024 } };
}

// The line naming the error beats the tail: Node ends a crash with a stack dump and its version.
function errorSummary(text: string): string {
  const lines = text.trim().split("\n").filter(Boolean);
  const error = lines.find((l) => /\w*Error\b|error:/i.test(l));
  return (error ?? lines.slice(-3).join(" | ")).trim().slice(0, 300) || "(no output)";
}

/** Null when `dir` holds exactly the expected files with the expected content, else what is wrong. */
export async function verify(dir: string, expected: Map<string, string>): Promise<string | null> {
  const found = new Set(await readdir(dir));
  const missing = [...expected.keys()].filter((n) => !found.has(n));
  if (missing.length) return `missing ${missing.length} file(s), e.g. ${missing[0]}`;
  const extra = [...found].filter((n) => !expected.has(n));
  if (extra.length) return `left ${extra.length} unexpected file(s) in the destination, e.g. ${extra[0]}`;
  for (const [name, sha] of expected)
    if ((await sha256File(join(dir, name))) !== sha) return `wrong content in ${name}`;
  return null;
}

/** The middle value; for an even count, the mean of the two middle ones. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}
