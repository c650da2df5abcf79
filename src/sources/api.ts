/** What the hub and Civitai sources share: where their API is, how it is asked, and reading its JSON answers. */
import { InvalidArgumentError, tlsFailure } from "../errors.js";
import { BadApiResponseError } from "./errors.js";

type Env = Record<string, string | undefined>;

/** An API's base URL from `variable` (e.g. HF_ENDPOINT), else `fallback`; trailing slashes dropped, http(s) only. */
export function endpointFromEnv(env: Env, variable: string, fallback: string): string {
  const value = (env[variable] || fallback).replace(/\/+$/, "");
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(`${variable} ${JSON.stringify(value)} is not a URL: give e.g. ${fallback}.`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new InvalidArgumentError(`${variable} must be an http:// or https:// URL, not ${url.protocol}.`);
  }
  return value;
}

/**
 * The fetch an API is asked through (the caller's, else the global one), with a refused certificate, which fetch
 * hides behind "fetch failed", turned into the TlsCertificateError that says which CA to pass.
 */
export function apiFetch(base: typeof fetch = fetch): typeof fetch {
  return (input, init) =>
    base(input, init).catch((err: unknown) => {
      throw tlsFailure(err) ?? err;
    });
}

/** The body as JSON; anything else means the endpoint is not the API it was taken for. */
export async function readJson(response: Response, url: string): Promise<unknown> {
  try {
    return await response.json();
  } catch {
    throw new BadApiResponseError(url, "a body that is not JSON");
  }
}
