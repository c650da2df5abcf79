/**
 * The parts of undici that dlqueue runs, loaded file by file. undici's index loads every API it has (fetch,
 * WebSocket, caches, mocks) and makes Node load its own bundled copy of undici as well: 85 ms of CPU and 9 MB
 * before the first byte, a third of a short `dlqueue get`. Types still come from the index, which costs nothing.
 * Static imports, so the CLI's bundler (scripts/bundle-cli.mjs) takes these files into the bundle.
 */
import type * as Undici from "undici";
import apiConnect from "undici/lib/api/api-connect.js";
import connector from "undici/lib/core/connect.js";
import agent from "undici/lib/dispatcher/agent.js";
import dispatcher from "undici/lib/dispatcher/dispatcher.js";
import envHttpProxyAgent from "undici/lib/dispatcher/env-http-proxy-agent.js";
import proxyAgent from "undici/lib/dispatcher/proxy-agent.js";

// A proxy tunnels through its client's `connect()`, which undici's index adds to every dispatcher along with
// request(), stream(), pipeline() and upgrade(): dlqueue calls none of those, and they cost 12 ms of every start.
Object.assign((dispatcher as typeof Undici.Dispatcher).prototype, { connect: apiConnect });

export const Agent: typeof Undici.Agent = agent;
export const EnvHttpProxyAgent: typeof Undici.EnvHttpProxyAgent = envHttpProxyAgent;
export const ProxyAgent: typeof Undici.ProxyAgent = proxyAgent;
export const buildConnector: typeof Undici.buildConnector = connector;
export type Agent = Undici.Agent;
