/**
 * The parts of undici that dlqueue runs, loaded file by file. undici's index loads every API it has (fetch,
 * WebSocket, caches, mocks) and makes Node load its own bundled copy of undici as well: 85 ms of CPU and 9 MB
 * before the first byte, a third of a short `dlqueue get`. Types still come from the index, which costs nothing.
 */
import { createRequire } from "node:module";
import type * as Undici from "undici";

const require = createRequire(import.meta.url);

// As undici's index does: a proxy tunnels through a client's `connect()`, and a dispatcher handed to a caller
// should answer `request()` as undici's own do.
const Dispatcher: typeof Undici.Dispatcher = require("undici/lib/dispatcher/dispatcher.js");
Object.assign(Dispatcher.prototype, require("undici/lib/api/index.js"));

export const Agent: typeof Undici.Agent = require("undici/lib/dispatcher/agent.js");
export const EnvHttpProxyAgent: typeof Undici.EnvHttpProxyAgent = require("undici/lib/dispatcher/env-http-proxy-agent.js");
export const ProxyAgent: typeof Undici.ProxyAgent = require("undici/lib/dispatcher/proxy-agent.js");
export const buildConnector: typeof Undici.buildConnector = require("undici/lib/core/connect.js");
export type Agent = Undici.Agent;
