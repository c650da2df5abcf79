// Installs the comparison tools when missing and runs a private, unprivileged nginx on loopback.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";

const NEEDED: Record<string, string> = {
  "/usr/sbin/nginx": "nginx-light",
  "/usr/bin/aria2c": "aria2",
  "/usr/bin/time": "time",
  "/usr/bin/curl": "curl",
  "/usr/bin/rsvg-convert": "librsvg2-bin",
  // The shared queue's row (bench/workers.ts) runs its own Redis.
  "/usr/bin/redis-server": "redis-server",
};

export function ensureTools(): void {
  const missing = Object.entries(NEEDED)
    .filter(([bin]) => !existsSync(bin))
    .map(([, pkg]) => pkg);
  if (missing.length === 0) return;
  console.log(`installing ${missing.join(" ")} ...`);
  const install = () =>
    execFileSync("apt-get", ["install", "-y", "--no-install-recommends", ...missing], {
      stdio: "inherit",
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    });
  try {
    install();
  } catch {
    // A fresh machine has no package lists yet; fetching them is slow, so only when needed.
    execFileSync("apt-get", ["update"], { stdio: "inherit" });
    install();
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

export interface Nginx {
  baseUrl: string;
  stop(): Promise<void>;
}

function config(dir: string, root: string, port: number): string {
  // As root, nginx would drop its workers to "nobody"; pin them to us so they can read the data folder.
  const user =
    process.getuid?.() === 0 ? `user ${userInfo().username} ${execFileSync("id", ["-gn"]).toString().trim()};` : "";
  return `${user}
daemon off;
worker_processes auto;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65s;
  keepalive_requests 100000;
  default_type application/octet-stream;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port};
    root ${root};
  }
}
`;
}

export async function startNginx(root: string): Promise<Nginx> {
  const dir = await mkdtemp(join(tmpdir(), "dlqueue-bench-nginx-"));
  const port = await freePort();
  const conf = join(dir, "nginx.conf");
  await writeFile(conf, config(dir, root, port));
  // -e: the compiled-in error log under /var/log is opened before the config is read.
  const proc: ChildProcess = spawn("/usr/sbin/nginx", ["-p", dir, "-c", conf, "-e", join(dir, "error.log")], {
    stdio: ["ignore", "inherit", "inherit"],
  });
  let exited = false;
  // Should the harness crash before stop(), nginx must not outlive it holding the port.
  const orphanGuard = () => proc.kill("SIGQUIT");
  process.once("exit", orphanGuard);
  proc.once("exit", () => {
    exited = true;
    process.off("exit", orphanGuard);
  });
  const baseUrl = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (exited) throw new Error(`nginx exited: ${await readFile(join(dir, "error.log"), "utf8").catch(() => "")}`);
    try {
      if ((await fetch(`${baseUrl}/manifest.json`, { method: "HEAD" })).ok) break;
    } catch {
      if (i > 100) throw new Error("nginx did not start within 5 s");
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    baseUrl,
    async stop() {
      if (!exited) {
        const gone = new Promise((resolve) => proc.once("exit", resolve));
        proc.kill("SIGQUIT");
        await gone;
      }
      // Surface warnings (the log is empty on a clean run) before the folder goes away.
      const log = await readFile(join(dir, "error.log"), "utf8").catch(() => "");
      if (log.trim()) console.log(`nginx error.log:\n${log}`);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
