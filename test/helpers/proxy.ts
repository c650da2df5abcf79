/**
 * A small forward proxy on 127.0.0.1 for tests: CONNECT tunnels (what undici's ProxyAgent uses, for http:// origins
 * too) and absolute-URI requests (what plain HTTP proxy clients send). It records what passes through it.
 */
import { createServer, type IncomingHttpHeaders, request } from "node:http";
import { type AddressInfo, connect, type Socket } from "node:net";

export interface ProxiedRequest {
  method: string;
  /** `host:port` for CONNECT, the absolute URI otherwise. */
  target: string;
  headers: IncomingHttpHeaders;
}

export interface ForwardProxy {
  readonly url: string;
  readonly requests: ProxiedRequest[];
  /** Bytes relayed from origins to clients. */
  readonly bytesToClients: number;
  close(): Promise<void>;
}

/** `credentials` ("user:pass"): answer 407 to requests without that Proxy-Authorization. */
export async function startProxy(options: { credentials?: string } = {}): Promise<ForwardProxy> {
  const sockets = new Set<Socket>();
  const requests: ProxiedRequest[] = [];
  let bytesToClients = 0;
  const expected = options.credentials ? `Basic ${Buffer.from(options.credentials).toString("base64")}` : undefined;
  const authorized = (headers: IncomingHttpHeaders) => !expected || headers["proxy-authorization"] === expected;

  const server = createServer((req, res) => {
    requests.push({ method: req.method ?? "GET", target: req.url ?? "", headers: req.headers });
    if (!authorized(req.headers)) {
      res.writeHead(407, { "proxy-authenticate": "Basic" }).end();
      return;
    }
    const target = new URL(req.url ?? "");
    const headers = { ...req.headers };
    delete headers["proxy-authorization"];
    delete headers["proxy-connection"];
    const upstream = request(target, { method: req.method, headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.on("data", (chunk: Buffer) => {
        bytesToClients += chunk.length;
      });
      answer.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    req.pipe(upstream);
  });
  server.on("connect", (req, client: Socket, head: Buffer) => {
    requests.push({ method: "CONNECT", target: req.url ?? "", headers: req.headers });
    if (!authorized(req.headers)) {
      client.end(
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n",
      );
      return;
    }
    const [host, port] = (req.url ?? "").split(":");
    const upstream = connect(Number(port), host, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length > 0) upstream.write(head);
      upstream.on("data", (chunk: Buffer) => {
        bytesToClients += chunk.length;
      });
      upstream.pipe(client);
      client.pipe(upstream);
    });
    sockets.add(upstream);
    upstream.once("close", () => sockets.delete(upstream));
    upstream.on("error", () => client.destroy());
    client.on("error", () => upstream.destroy());
  });
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    get bytesToClients() {
      return bytesToClients;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  };
}
