/**
 * A real redis-server per test suite (Debian's redis-server 7), on 127.0.0.1 with AOF on, so tests can kill it,
 * bring it back and see what survives — as a shared queue's Redis would in production.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { systemPackage } from "./system.js";

export const redisPackage = systemPackage(
  "redis-server",
  "redis-server",
  (() => {
    try {
      return execFileSync("redis-server", ["--version"], { encoding: "utf8" }).startsWith("Redis server");
    } catch {
      return false;
    }
  })(),
);

export interface RedisServer {
  url: string;
  port: number;
  dir: string;
  /** The running server's pid; a restart changes it. */
  readonly pid: number;
  /** SIGTERM (Redis flushes its AOF), SIGKILL if it has not exited within 5 s. */
  stop(): Promise<void>;
  /** SIGKILL: a crash, with no chance to flush anything. */
  kill(): Promise<void>;
  /** Starts it again on the same port and dir (stopping it first if it runs), so the AOF brings the data back. */
  restart(): Promise<void>;
}

const READY_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 5_000;
const TAIL_CHARS = 4_000;

// Servers still running and temp dirs this helper made: a test process that ends without stop() (a failed before
// hook, Ctrl-C) must not leave redis-servers bound to ports or data in the temp dir.
const running = new Set<ChildProcess>();
const madeDirs = new Set<string>();
let cleanupArmed = false;

function cleanUp(): void {
  for (const child of running) child.kill("SIGKILL");
  running.clear();
  for (const dir of madeDirs) rmSync(dir, { recursive: true, force: true });
  madeDirs.clear();
}

function armCleanup(): void {
  if (cleanupArmed) return;
  cleanupArmed = true;
  process.on("exit", cleanUp);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    // A listener replaces the default exit on the signal, so after cleaning up the signal is raised again.
    process.once(signal, () => {
      cleanUp();
      process.kill(process.pid, signal);
    });
  }
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

class Tail {
  text = "";
  add(chunk: Buffer): void {
    this.text = (this.text + chunk.toString("utf8")).slice(-TAIL_CHARS);
  }
}

/**
 * Sends the signal and resolves once the server has exited, SIGKILL after `graceMs`. The child is unref'd (see
 * launch), so it is ref'd here: a test waiting for the exit must hold the event loop open.
 */
async function terminate(child: ChildProcess, signal: NodeJS.Signals, graceMs?: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.ref();
  const done = new Promise((resolve) => child.once("exit", resolve));
  child.kill(signal);
  const timer = graceMs === undefined ? undefined : setTimeout(() => child.kill("SIGKILL"), graceMs);
  await done;
  clearTimeout(timer);
}

/** Spawns redis-server and resolves once it answers PING; rejects with its output if it exits or stays silent. */
async function launch(port: number, dir: string): Promise<ChildProcess> {
  armCleanup();
  const args = [
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--protected-mode",
    "yes",
    "--dir",
    dir,
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
    "--save",
    "",
    "--daemonize",
    "no",
  ];
  const child = spawn("redis-server", args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  child.once("exit", () => running.delete(child));
  // Both pipes are read to the end (a full pipe would block the server's logging); only the tail is kept.
  const output = new Tail();
  child.stdout?.on("data", (chunk: Buffer) => output.add(chunk));
  child.stderr?.on("data", (chunk: Buffer) => output.add(chunk));
  // A suite that forgets stop() must still end; the exit hook kills the server then.
  child.unref();
  for (const stream of [child.stdout, child.stderr]) (stream as unknown as { unref(): void } | null)?.unref();

  const failed = (why: string) =>
    new Error(`redis-server on 127.0.0.1:${port} (dir ${dir}) ${why}. Its output:\n${output.text || "(none)"}`);
  const spawnError = new Promise<never>((_, reject) => {
    child.once("error", (err) => reject(failed(`could not be started: ${err.message}`)));
    child.once("exit", (code, signal) => reject(failed(`exited before answering PING (${signal ?? `code ${code}`})`)));
  });
  spawnError.catch(() => {});
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const answered = await Promise.race([answers(port, child.pid), spawnError]);
    if (answered) return child;
    if (Date.now() > deadline) {
      await terminate(child, "SIGKILL");
      throw failed(`did not answer PING within ${READY_TIMEOUT_MS / 1000} s`);
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/**
 * True once this very server answers PING: not while it is still loading its AOF (it answers -LOADING), and not
 * when another process on the port answers for it (ours would then be about to exit, unable to bind).
 */
async function answers(port: number, pid: number | undefined): Promise<boolean> {
  const client = new Redis({
    host: "127.0.0.1",
    port,
    lazyConnect: true,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    connectTimeout: 1_000,
  });
  client.on("error", () => {});
  try {
    await client.connect();
    if ((await client.ping()) !== "PONG") return false;
    return /^process_id:(\d+)\r?$/m.exec(await client.info("server"))?.[1] === String(pid);
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

export async function startRedis(options: { dir?: string; port?: number } = {}): Promise<RedisServer> {
  let dir = options.dir;
  if (dir === undefined) {
    dir = mkdtempSync(join(tmpdir(), "dlqueue-redis-"));
    madeDirs.add(dir);
  }
  let port = options.port ?? (await freePort());
  let child: ChildProcess;
  try {
    child = await launch(port, dir);
  } catch (err) {
    if (options.port !== undefined || !String(err).includes("Address already in use")) throw err;
    // Another process took the free port between our probe and redis-server's bind: one more try on a new one.
    port = await freePort();
    child = await launch(port, dir);
  }
  const serverDir = dir;

  const stop = () => terminate(child, "SIGTERM", STOP_GRACE_MS);

  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir: serverDir,
    get pid() {
      return child.pid as number;
    },
    stop,
    kill: () => terminate(child, "SIGKILL"),
    async restart() {
      await stop();
      child = await launch(port, serverDir);
    },
  };
}

export interface RedisKey {
  key: string;
  type: string;
  values: string[];
}

/**
 * Every key in the database with everything it holds, as strings (hash fields and values, zset members and
 * scores, stream entry fields and values), sorted by key: what a test searches to prove a token is not stored
 * in clear anywhere.
 */
export async function scanAll(url: string): Promise<RedisKey[]> {
  const client = new Redis(url, { maxRetriesPerRequest: 1 });
  try {
    const keys = new Set<string>();
    let cursor = "0";
    do {
      const [next, batch] = await client.scan(cursor, "COUNT", 1000);
      for (const key of batch) keys.add(key);
      cursor = next;
    } while (cursor !== "0");

    const found: RedisKey[] = [];
    for (const key of [...keys].sort()) {
      const type = await client.type(key);
      const values = await readValues(client, key, type);
      // A key that expired between SCAN and TYPE reads as "none"; it holds nothing any more.
      if (values !== undefined) found.push({ key, type, values });
    }
    return found;
  } finally {
    client.disconnect();
  }
}

async function readValues(client: Redis, key: string, type: string): Promise<string[] | undefined> {
  switch (type) {
    case "string":
      return [(await client.get(key)) ?? ""];
    case "hash":
      return Object.entries(await client.hgetall(key)).flat();
    case "list":
      return client.lrange(key, 0, -1);
    case "set":
      return client.smembers(key);
    case "zset":
      return client.zrange(key, "0", "-1", "WITHSCORES");
    case "stream":
      return (await client.xrange(key, "-", "+")).flatMap(([, fields]) => fields);
    case "none":
      return undefined;
    default:
      throw new Error(`scanAll: key ${key} has type ${type}, which it cannot read; add a reader for it.`);
  }
}
