/**
 * The shared queue's command line (`dlqueue serve --redis`, `dlqueue worker`): what is refused before any Redis is
 * asked, and that the commands that do not use Redis never load BullMQ. Drives the built dist/bin/dlqueue.js (the
 * bundle npm installs as `dlqueue`): run `npm run build` first.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { createService } from "../src/server/service.js";
import { memoryLogger, tempDir } from "./helpers/fs.js";
import { startOrigin } from "./helpers/origin.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(ROOT, "dist/bin/dlqueue.js");

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI in `cwd` (so a default ./downloads lands there) and waits for its exit, at most 20 s. */
function runCli(args: string[], cwd: string, env: Record<string, string> = {}): Promise<Finished> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  for (const name of ["NODE_OPTIONS", "NODE_TEST_CONTEXT", ...(env.DLQUEUE_SECRET ? [] : ["DLQUEUE_SECRET"])]) {
    delete childEnv[name];
  }
  const child = spawn(process.execPath, [CLI, ...args], { cwd, env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => {
    stdout += chunk;
  });
  child.stderr.on("data", (chunk) => {
    stderr += chunk;
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  return new Promise((done) =>
    child.on("close", (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    }),
  );
}

/** Exit 2 with `pattern` on the first stderr line, nothing on stdout, and no download folder made. */
function assertUsage(run: Finished, pattern: RegExp, cwd: string): void {
  assert.equal(run.code, 2, `exit status; stderr: ${run.stderr}`);
  assert.equal(run.stdout, "");
  assert.match(run.stderr.split("\n")[0] as string, pattern);
  assert.doesNotMatch(run.stderr, /\n\s+at /, "no stack trace");
  assert.ok(!existsSync(join(cwd, "downloads")), "nothing created under the default --root");
}

describe("dlqueue serve with a shared queue: refusals", { skip: !existsSync(CLI) && "run the build first" }, () => {
  test("-j 0 without --redis is refused: only an API node of a shared queue runs no downloads", async (t) => {
    const cwd = await tempDir(t);
    const run = await runCli(["serve", "--port", "0", "-j", "0"], cwd);
    assertUsage(run, /^error: -j 0 runs no downloads: .*needs --redis URL\.$/, cwd);
  });

  test("--queue without --redis is refused", async (t) => {
    const cwd = await tempDir(t);
    const run = await runCli(["serve", "--port", "0", "--queue", "models"], cwd);
    assertUsage(run, /^error: --queue names a queue on a shared Redis: add --redis URL\.$/, cwd);
  });

  test("--redis with --state is refused: the jobs are either in Redis or in the file", async (t) => {
    const cwd = await tempDir(t);
    const run = await runCli(["serve", "--port", "0", "--redis", "redis://127.0.0.1:1", "--state", "q.db"], cwd);
    assertUsage(run, /^error: --state keeps jobs in a local file, --redis keeps them in Redis: give one/, cwd);
    assert.ok(!existsSync(join(cwd, "q.db")), "no state file made");
  });

  test("-j takes whole numbers from 0", async (t) => {
    const cwd = await tempDir(t);
    const run = await runCli(["serve", "--port", "0", "-j", "-1"], cwd);
    assert.equal(run.code, 2);
    assert.match(run.stderr, /-j, --max-parallel <n>' argument '-1' is invalid\. Give a whole number of at least 0/);
  });
});

describe("dlqueue worker: refusals", { skip: !existsSync(CLI) && "run the build first" }, () => {
  test("without --redis: exit 2, saying how to give it", async (t) => {
    const cwd = await tempDir(t);
    const run = await runCli(["worker"], cwd);
    assertUsage(
      run,
      /^error: give the shared queue's Redis with --redis URL, e\.g\. --redis redis:\/\/127\.0\.0\.1:6379\.$/,
      cwd,
    );
  });

  for (const [args, message] of [
    [["-j", "0"], /'-j, --max-parallel <n>' argument '0' is invalid\. Give a whole number of at least 1, not "0"\./],
    [["-x", "1.5"], /'-x, --connections <n>' argument '1\.5' is invalid\. Give a whole number of at least 1/],
    [
      ["--lock-duration", "50"],
      /'--lock-duration <ms>' argument '50' is invalid\. Give a whole number of at least 1000/,
    ],
    [["--frobnicate"], /unknown option '--frobnicate'/],
  ] as const) {
    test(`${args.join(" ")}: exit 2, naming the option`, async (t) => {
      const cwd = await tempDir(t);
      const run = await runCli(["worker", "--redis", "redis://127.0.0.1:1", ...args], cwd);
      assertUsage(run, message, cwd);
    });
  }

  test("a --redis that is not a redis:// URL: exit 2, with the URL's form and not its password", async (t) => {
    const cwd = await tempDir(t);
    const run = await runCli(["worker", "--redis", "http://user:hunter2@127.0.0.1:6379"], cwd);
    assertUsage(run, /^error: The Redis URL must look like redis:\/\/host:6379/, cwd);
    assert.doesNotMatch(run.stderr, /hunter2/);
  });

  test("a DLQUEUE_SECRET too short to key the seal: exit 2 naming the variable, for serve and worker alike", async (t) => {
    const cwd = await tempDir(t);
    const env = { DLQUEUE_SECRET: "s3cr3tX" };
    const worker = await runCli(["worker", "--redis", "redis://127.0.0.1:1"], cwd, env);
    assertUsage(worker, /^error: DLQUEUE_SECRET is \d+ characters long; it must be at least/, cwd);
    assert.doesNotMatch(worker.stderr, /s3cr3tX/, "the secret is not echoed");
    const serve = await runCli(["serve", "--port", "0", "--redis", "redis://127.0.0.1:1", "-j", "0"], cwd, env);
    assertUsage(serve, /^error: DLQUEUE_SECRET is \d+ characters long; it must be at least/, cwd);
  });

  test("the help lists every option on one line each", async (t) => {
    const run = await runCli(["worker", "--help"], await tempDir(t));
    assert.equal(run.code, 0);
    for (const flag of [
      "--redis <url>",
      "--queue <name>",
      "--root <dir>",
      "-j, --max-parallel <n>",
      "-x, --connections <n>",
      "--no-fsync",
      "--lock-duration <ms>",
      "--allow-private-networks",
      "-q, --quiet",
    ]) {
      const line = run.stdout.split("\n").find((text) => text.trimStart().startsWith(flag));
      assert.ok(line, `${flag} in the help`);
    }
  });
});

describe("BullMQ loads only for the commands that use Redis", {
  skip: !existsSync(CLI) && "run the build first",
}, () => {
  /** Every file `entry` reaches through static imports (dynamic import() excluded), and the packages, by name. */
  function staticGraph(entry: string): { files: Set<string>; packages: Set<string> } {
    const files = new Set<string>();
    const packages = new Set<string>();
    const visit = (file: string) => {
      if (files.has(file)) return;
      files.add(file);
      const source = readFileSync(file, "utf8");
      // `import … from "x"`, `import "x"` and `export … from "x"` at the start of a line: the static ones.
      for (const match of source.matchAll(
        /^(?:import\s*["']([^"']+)["']|(?:import|export)\b[^;"'`]*?\bfrom\s*["']([^"']+)["'])/gm,
      )) {
        const specifier = (match[1] ?? match[2]) as string;
        if (specifier.startsWith(".")) visit(resolve(dirname(file), specifier));
        else
          packages.add(
            specifier.startsWith("@")
              ? specifier.split("/").slice(0, 2).join("/")
              : (specifier.split("/")[0] as string),
          );
      }
    };
    visit(entry);
    return { files, packages };
  }

  /** The modules bundled into `files`: esbuild heads each one's code with a `// dist/…` or `// node_modules/…` line. */
  function bundledModules(files: Set<string>): Set<string> {
    const modules = [...files].flatMap((file) =>
      [...readFileSync(file, "utf8").matchAll(/^\/\/ ((?:dist|node_modules)\/\S+\.[cm]?js)$/gm)].map(
        (m) => m[1] as string,
      ),
    );
    return new Set(modules);
  }

  test("no static import chain from the CLI's entry reaches bullmq, ioredis, dist/redis or any command's engine", () => {
    const { files, packages } = staticGraph(CLI);
    const modules = bundledModules(files);
    // The walk found the CLI's own modules and packages, so a miss below is not a walk that found nothing.
    assert.ok(modules.has("dist/cli/get-command.js") && modules.has("dist/cli/worker-command.js"));
    assert.ok(modules.has("node_modules/commander/lib/command.js"));
    // What a command runs loads when it runs: `--version`, `--help` and every other command start without it.
    for (const engine of ["cli/get.js", "cli/serve.js", "cli/worker.js", "queue.js", "server/security.js"]) {
      assert.ok(!modules.has(`dist/${engine}`), `${engine} is imported statically`);
    }
    for (const heavy of ["undici", "cli-progress", "string-width"]) {
      const found = [...modules].filter((module) => module.startsWith(`node_modules/${heavy}/`));
      assert.deepEqual(found, [], `${heavy} is imported statically`);
    }
    for (const external of ["fastify", "better-sqlite3", "bullmq", "ioredis"]) {
      assert.ok(!packages.has(external), `${external} is imported statically`);
    }
    assert.deepEqual(
      [...modules].filter((module) => module.startsWith("dist/redis/")),
      [],
    );
  });

  test("`get` runs undici from the bundle, not from node_modules, and the bundle leaves out its server's libraries", () => {
    const modules = bundledModules(new Set(readdirSync(join(ROOT, "dist/bin")).map((f) => join(ROOT, "dist/bin", f))));
    assert.ok(modules.has("node_modules/undici/lib/dispatcher/client-h1.js"));
    assert.ok(modules.has("dist/queue.js") && modules.has("dist/cli/get.js"));
    for (const external of ["fastify", "better-sqlite3", "bullmq", "ioredis", "@huggingface/hub"]) {
      const found = [...modules].filter((module) => module.startsWith(`node_modules/${external}/`));
      assert.deepEqual(found, [], `${external} is bundled`);
    }
  });

  test("the library's entry loads no progress board: cli-progress and string-width come with the first bar", () => {
    const { files, packages } = staticGraph(join(ROOT, "dist/index.js"));
    assert.ok(files.has(join(ROOT, "dist/progress/console.js")) && files.has(join(ROOT, "dist/queue.js")));
    for (const heavy of ["cli-progress", "string-width", "bullmq", "ioredis", "fastify", "better-sqlite3"]) {
      assert.ok(!packages.has(heavy), `${heavy} is imported statically`);
    }
  });

  test("nor from the service (dlqueue/server): only createService({ shared }) loads it", () => {
    const { files, packages } = staticGraph(join(ROOT, "dist/server/service.js"));
    assert.ok(packages.has("fastify"));
    assert.ok(!packages.has("bullmq") && !packages.has("ioredis"));
    assert.deepEqual(
      [...files].filter((file) => file.startsWith(join(ROOT, "dist/redis/"))),
      [],
    );
  });
});

describe("the guarded dispatcher a worker downloads through", () => {
  test("refuses a source given as a loopback address (no lookup sees it) before connecting, as it does a name", async (t) => {
    const origin = await startOrigin();
    t.after(() => origin.close());
    const route = origin.route("/guarded.bin", { size: 10 });
    const root = await tempDir(t);
    // The queue createService() builds is armed as a worker's is; jobs given to it directly skip the API's check.
    const service = await createService({ root, logger: memoryLogger().logger, queueOptions: { retries: 0 } });
    t.after(() => service.close());
    const port = new URL(origin.url).port;
    for (const host of ["127.0.0.1", "[::ffff:127.0.0.1]"]) {
      const job = service.queue.download({ source: `http://${host}:${port}/guarded.bin`, dest: root });
      await service.queue.waitForJob(job, { timeoutMs: 15_000 });
      assert.equal(job.status, "error", host);
      assert.match(String(job.error), /is a loopback address.*--allow-private-networks/, host);
    }
    assert.equal(route.requests.length, 0, "the origin was never asked");

    const open = await createService({ root: await tempDir(t), allowPrivateNetworks: true });
    t.after(() => open.close());
    const job = open.queue.download({ source: route.url, dest: `${root}/open.bin` });
    await open.queue.waitForJob(job, { timeoutMs: 15_000 });
    assert.equal(job.status, "completed", String(job.error));
    assert.equal(route.requests.length, 1, "with allowPrivateNetworks the same address downloads");
  });
});

describe("dlqueue serve --redis while Redis is down", { skip: !existsSync(CLI) && "run the build first" }, () => {
  test("starts anyway, says so once, answers 503 with the reason, and stops cleanly on SIGTERM", async (t) => {
    const cwd = await tempDir(t);
    const port = await closedPort();
    const args = ["serve", "--port", "0", "-j", "2", "--redis", `redis://:hunter2@127.0.0.1:${port}`, "--queue", "q1"];
    const child = spawn(process.execPath, [CLI, ...args], { cwd, stdio: ["ignore", "pipe", "pipe"] });
    t.after(() => child.kill("SIGKILL"));
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
    });
    child.stderr.on("data", (chunk) => {
      stderr += chunk;
    });
    const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)));
    const deadline = Date.now() + 15_000;
    while (!/listening on (http:\/\/\S+\/)/.test(stdout) && Date.now() < deadline) {
      await new Promise((done) => setTimeout(done, 50));
    }
    const url = /listening on (http:\/\/\S+\/)/.exec(stdout)?.[1];
    assert.ok(url, `the listening line; stderr: ${stderr}`);
    assert.match(
      stdout,
      new RegExp(`; shared queue "q1" on Redis 127\\.0\\.0\\.1:${port}, a worker here runs 2 at once \\(-j\\)\n$`),
    );
    assert.equal(
      stderr,
      `dlqueue warning: Redis at 127.0.0.1:${port} is not reachable yet (connect ECONNREFUSED 127.0.0.1:${port}): ` +
        "requests get 503 until it is; start it or check its URL.\n",
    );

    const list = await fetch(`${url}api/v1/download_queue/`);
    assert.equal(list.status, 503);
    assert.match(
      ((await list.json()) as { detail: string }).detail,
      new RegExp(`^Redis at 127\\.0\\.0\\.1:${port} cannot be reached`),
    );
    // A public address given as such is not looked up, so the source passes its check and reaches the queue.
    const queued = await fetch(`${url}api/v1/download_queue/i/`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ source: "http://93.184.215.14/model.bin", dest: "m/" }),
    });
    assert.equal(queued.status, 503);
    assert.doesNotMatch(stdout + stderr, /hunter2/, "the URL's password is never printed");

    const stopping = Date.now();
    child.kill("SIGTERM");
    assert.equal(await exited, 0, stderr);
    assert.ok(Date.now() - stopping < 5000, "the worker still waiting for Redis does not hold the exit");
  });
});

/** A port nothing listens on: one the system just handed out and took back. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const { port } = server.address() as { port: number };
  await new Promise((done) => server.close(done));
  return port;
}
