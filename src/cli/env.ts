/** What the CLI takes from the environment: where state files go by default, and the model hubs' tokens. */
import { homedir } from "node:os";
import { join } from "node:path";
import type { TokenRule } from "../options.js";

/** `$XDG_STATE_HOME/dlqueue/queue.db`, the XDG default being `~/.local/state`. */
export function defaultStatePath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_STATE_HOME || join(homedir(), ".local", "state"), "dlqueue", "queue.db");
}

/** Hosts whose token can come from the environment, so the usual model hubs work without flags. */
const ENV_TOKENS = [
  { variable: "HF_TOKEN", host: "huggingface.co" },
  { variable: "CIVITAI_TOKEN", host: "civitai.com" },
];

/** The library's `tokens` rules for the hub tokens set in `env`. */
export function tokenRulesFromEnv(env: NodeJS.ProcessEnv): TokenRule[] {
  return ENV_TOKENS.flatMap(({ variable, host }) => {
    const token = env[variable]?.trim();
    return token ? [{ url: hostPattern(host), token }] : [];
  });
}

/**
 * Matches URLs on `host` or a subdomain of it, and nothing that merely contains the name: not
 * `huggingface.co.evil.com`, not `evilhuggingface.co`, not `https://huggingface.co@evil.com/` (userinfo).
 */
function hostPattern(host: string): RegExp {
  return new RegExp(`^https?://([^/?#@]*\\.)?${host.replaceAll(".", "\\.")}(:\\d+)?([/?#]|$)`, "i");
}
