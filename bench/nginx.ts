// Installs the comparison tools when missing and runs a private, unprivileged nginx on loopback.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";

const NEEDED: Record<string, string> = {
  "/usr/sbin/nginx": "nginx-light",
  "/usr/bin/aria2c": "aria2",
  "/usr/bin/time": "time",
  "/usr/bin/curl": "curl",
  // The https rows' certificates are made at start.
  "/usr/bin/openssl": "openssl",
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
  /** The same files over TLS. */
  httpsBaseUrl: string;
  /** The PEM certificate of the CA that signed the https server's certificate: what clients are told to trust. */
  caPath: string;
  stop(): Promise<void>;
}

/**
 * A CA and a leaf for 127.0.0.1 signed by it, so that clients verify the server as they would a CDN's (a
 * self-signed leaf, or verification turned off, would skip work that every real download does).
 * RSA 2048 rather than EC P-256: Hugging Face's hosts (behind AWS), the downloads this library is most used for,
 * served Amazon-issued RSA 2048 certificates when this was written, and a client verifies an RSA signature faster
 * than an ECDSA one, so a client pays here what it pays there. The key type only costs at the handshake; the per-byte cost comes from the cipher (AES-GCM under TLS 1.3),
 * which is the same either way.
 */
function makeCertificates(dir: string): { cert: string; key: string; ca: string } {
  const file = (name: string) => join(dir, name);
  writeFileSync(
    file("ca.cnf"),
    `[req]
prompt = no
distinguished_name = dn
x509_extensions = ext
[dn]
CN = dlqueue bench CA
[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
`,
  );
  writeFileSync(
    file("leaf.cnf"),
    `[req]
prompt = no
distinguished_name = dn
[dn]
CN = 127.0.0.1
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`,
  );
  const openssl = (...args: string[]) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
  const key = ["-newkey", "rsa:2048", "-nodes"];
  openssl(
    "req",
    "-x509",
    "-config",
    file("ca.cnf"),
    ...key,
    "-keyout",
    file("ca.key"),
    "-out",
    file("ca.pem"),
    "-days",
    "7",
  );
  openssl("req", "-new", "-config", file("leaf.cnf"), ...key, "-keyout", file("leaf.key"), "-out", file("leaf.csr"));
  openssl(
    "x509",
    "-req",
    "-in",
    file("leaf.csr"),
    "-CA",
    file("ca.pem"),
    "-CAkey",
    file("ca.key"),
    "-set_serial",
    "1",
    "-days",
    "7",
    "-extfile",
    file("leaf.cnf"),
    "-extensions",
    "ext",
    "-out",
    file("leaf.pem"),
  );
  return { cert: file("leaf.pem"), key: file("leaf.key"), ca: file("ca.pem") };
}

function config(dir: string, root: string, port: number, tls: { port: number; cert: string; key: string }): string {
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
    # The harness's readiness probe, answered whatever the root folder holds.
    location = /.ready { return 204; }
  }
  # As a CDN serves: TLS 1.2 and 1.3, HTTP/1.1 (no http2, which the clients here would not all speak), sessions
  # cached so a client's new connections may resume. sendfile stays on above, but without kernel TLS nginx reads
  # and encrypts in user space, as most servers do.
  server {
    listen 127.0.0.1:${tls.port} ssl;
    ssl_certificate ${tls.cert};
    ssl_certificate_key ${tls.key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 1h;
    root ${root};
  }
}
`;
}

export async function startNginx(root: string): Promise<Nginx> {
  const dir = await mkdtemp(join(tmpdir(), "dlqueue-bench-nginx-"));
  const port = await freePort();
  let tlsPort = port;
  while (tlsPort === port) tlsPort = await freePort();
  const { cert, key, ca } = makeCertificates(dir);
  const conf = join(dir, "nginx.conf");
  await writeFile(conf, config(dir, root, port, { port: tlsPort, cert, key }));
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
    if (
      await fetch(`${baseUrl}/.ready`).then(
        (r) => r.status === 204,
        () => false,
      )
    )
      break;
    if (i > 100) throw new Error("nginx did not start within 5 s");
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    baseUrl,
    httpsBaseUrl: `https://127.0.0.1:${tlsPort}`,
    caPath: ca,
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
