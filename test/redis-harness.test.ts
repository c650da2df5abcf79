import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import { Redis } from "ioredis";
import { type RedisServer, redisPackage, scanAll, startRedis } from "./helpers/redis.js";

const run = promisify(execFile);

/** A zombie counts as dead: a killed server whose parent has exited waits for whoever adopts it to reap it. */
function alive(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0] !== "Z";
  } catch {
    return false;
  }
}

/** Whether anything accepts a TCP connection on 127.0.0.1:port. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

async function withClient<T>(url: string, use: (client: Redis) => Promise<T>): Promise<T> {
  const client = new Redis(url, { maxRetriesPerRequest: 1 });
  try {
    return await use(client);
  } finally {
    client.disconnect();
  }
}

describe("the redis-server test harness", { skip: redisPackage.skip }, () => {
  let redis: RedisServer;

  before(async () => {
    redisPackage.require();
    redis = await startRedis();
  });

  after(async () => {
    await redis?.stop();
  });

  test("a server on 127.0.0.1 with AOF on, in its own temp dir", async () => {
    assert.match(redis.url, /^redis:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(redis.url, `redis://127.0.0.1:${redis.port}`);
    assert.ok(alive(redis.pid));
    const config = await withClient(redis.url, async (client) => ({
      appendonly: await client.config("GET", "appendonly"),
      save: await client.config("GET", "save"),
      dir: await client.config("GET", "dir"),
      bind: await client.config("GET", "bind"),
    }));
    assert.deepEqual(config.appendonly, ["appendonly", "yes"]);
    assert.deepEqual(config.save, ["save", ""]);
    assert.deepEqual(config.dir, ["dir", redis.dir]);
    assert.deepEqual(config.bind, ["bind", "127.0.0.1"]);
  });

  test("SET then GET; a restart keeps the key (AOF), and so does a SIGKILL and restart", async () => {
    await withClient(redis.url, (client) => client.set("harness:key", "kept"));
    assert.equal(await withClient(redis.url, (client) => client.get("harness:key")), "kept");

    const before = redis.pid;
    await redis.restart();
    assert.notEqual(redis.pid, before, "a new process");
    assert.ok(!alive(before), "the old one is gone");
    assert.equal(await withClient(redis.url, (client) => client.get("harness:key")), "kept");

    await withClient(redis.url, (client) => client.set("harness:written-before-kill", "also kept"));
    const killed = redis.pid;
    await redis.kill();
    assert.ok(!alive(killed));
    assert.equal(await accepts(redis.port), false, "nothing listens once it is killed");
    await redis.restart();
    const values = await withClient(redis.url, (client) => client.mget("harness:key", "harness:written-before-kill"));
    assert.deepEqual(values, ["kept", "also kept"]);
  });

  test("scanAll reads every kind of key: strings, hashes, lists, sets, sorted sets and streams", async () => {
    await withClient(redis.url, async (client) => {
      await client.flushall();
      await client.set("s", "string-value");
      await client.hset("h", "field-name", "hash-value");
      await client.rpush("l", "list-a", "list-b");
      await client.sadd("set", "set-member");
      await client.zadd("z", 7, "zset-member");
      await client.xadd("x", "*", "stream-field", "stream-value");
    });
    const keys = await scanAll(redis.url);
    assert.deepEqual(
      keys.map(({ key, type, values }) => ({ key, type, values })),
      [
        { key: "h", type: "hash", values: ["field-name", "hash-value"] },
        { key: "l", type: "list", values: ["list-a", "list-b"] },
        { key: "s", type: "string", values: ["string-value"] },
        { key: "set", type: "set", values: ["set-member"] },
        { key: "x", type: "stream", values: ["stream-field", "stream-value"] },
        { key: "z", type: "zset", values: ["zset-member", "7"] },
      ],
    );
  });

  test("scanAll goes past SCAN's first page", async () => {
    await withClient(redis.url, async (client) => {
      await client.flushall();
      const pipeline = client.pipeline();
      for (let i = 0; i < 2500; i++) pipeline.set(`many:${i}`, String(i));
      await pipeline.exec();
    });
    const keys = await scanAll(redis.url);
    assert.equal(keys.length, 2500);
    assert.equal(new Set(keys.map((k) => k.key)).size, 2500);
  });

  test("a port already taken fails fast, with the server's own words", async () => {
    const started = Date.now();
    await assert.rejects(startRedis({ port: redis.port }), (err: Error) => {
      assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${redis.port}`));
      assert.match(err.message, /exited before answering PING/);
      assert.match(err.message, /Address already in use/);
      return true;
    });
    assert.ok(Date.now() - started < 5_000, "it does not wait for the 10 s deadline");
  });

  test("stop() ends the server; a given dir and port are used again, and the data with them", async () => {
    await withClient(redis.url, (client) => client.set("harness:moved", "here"));
    const { dir, port, pid } = redis;
    await redis.stop();
    assert.ok(!alive(pid));
    assert.equal(await accepts(port), false);
    redis = await startRedis({ dir, port });
    assert.equal(redis.dir, dir);
    assert.equal(redis.port, port);
    assert.equal(await withClient(redis.url, (client) => client.get("harness:moved")), "here");
  });

  test("a test process that exits without stop() takes its redis-server with it, and its temp dir", async () => {
    const script = [
      'import { startRedis } from "./test/helpers/redis.ts";',
      "const redis = await startRedis();",
      "console.log(JSON.stringify({ pid: redis.pid, dir: redis.dir }));",
    ].join("\n");
    const { stdout } = await run(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: new URL("..", import.meta.url),
      timeout: 30_000,
    });
    const { pid, dir } = JSON.parse(stdout) as { pid: number; dir: string };
    assert.ok(pid > 0);
    assert.ok(!alive(pid), `redis-server ${pid} outlived its test process`);
    assert.ok(!existsSync(dir), `${dir} is left behind`);
  });
});
