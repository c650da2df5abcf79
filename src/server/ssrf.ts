/**
 * Server-side request forgery guard: a job submitted over the network must not make this machine fetch from its own
 * loopback, its LAN or a cloud metadata endpoint. Sources are checked when submitted (so the client gets a 400),
 * every redirect before it is followed (the queue's `checkRedirect`), and every connection once more when it is made,
 * so a host name that resolves to a public address at check time and a private one later (DNS rebinding) is refused
 * as well.
 */
import { lookup as dnsLookup } from "node:dns";
import { lookup as dnsLookupAll } from "node:dns/promises";
import { isIP, type LookupFunction } from "node:net";
import { DlqError, InvalidUrlError, UnsupportedSchemeError } from "../errors.js";
import type { DownloadQueueOptions } from "../options.js";
import { Agent, buildConnector } from "../transfer/undici.js";
import { checkCa, trustedContext } from "../validate.js";

/** Every address `hostname` resolves to; the hook lets tests stand in for DNS. */
export type Resolver = (hostname: string) => Promise<string[]>;

export interface AddressPolicy {
  /** Accept private, loopback and link-local targets: for a service used only on a trusted network. */
  allowPrivateNetworks: boolean;
  resolve?: Resolver;
}

/** A source or redirect that leads to an address a network client must not reach through us. */
export class BlockedAddressError extends DlqError {
  constructor(url: string, address: string, why: string) {
    super(
      `Refusing ${url}: ${address} is ${why}. dlqueue serve and its workers fetch only from public addresses; ` +
        "start them with --allow-private-networks to allow local and private ones.",
      "DLQ_ERR_BLOCKED_ADDRESS",
    );
  }
}

/** The host name does not resolve: there is nothing to check, and nothing to download. */
export class UnresolvableHostError extends DlqError {
  constructor(url: string, hostname: string, cause: unknown) {
    const code = (cause as { code?: string } | undefined)?.code ?? String(cause);
    super(`Cannot resolve the host ${hostname} of ${url} (${code}): check the URL.`, "DLQ_ERR_UNRESOLVABLE_HOST", {
      cause,
    });
  }
}

interface Block {
  base: bigint;
  bits: number;
  why: string;
}

const V4_BLOCKS: Block[] = [
  v4("0.0.0.0", 8, 'an unspecified ("this network") address'),
  v4("10.0.0.0", 8, "a private address"),
  v4("100.64.0.0", 10, "a carrier-grade NAT (shared) address"),
  v4("127.0.0.0", 8, "a loopback address"),
  v4("169.254.0.0", 16, "a link-local address"),
  v4("172.16.0.0", 12, "a private address"),
  v4("192.0.0.0", 24, "an IETF protocol address"),
  v4("192.0.2.0", 24, "a documentation address"),
  v4("192.168.0.0", 16, "a private address"),
  v4("198.18.0.0", 15, "a benchmarking address"),
  v4("198.51.100.0", 24, "a documentation address"),
  v4("203.0.113.0", 24, "a documentation address"),
  v4("224.0.0.0", 4, "a multicast address"),
  // Includes 255.255.255.255, the broadcast address.
  v4("240.0.0.0", 4, "a reserved address"),
];

const V6_BLOCKS: Block[] = [
  v6("::", 128, "the unspecified address"),
  v6("::1", 128, "a loopback address"),
  v6("64:ff9b:1::", 48, "a local-use NAT64 address"),
  v6("100::", 64, "a discard-only address"),
  v6("2001:db8::", 32, "a documentation address"),
  v6("fc00::", 7, "a private (unique local) address"),
  v6("fe80::", 10, "a link-local address"),
  v6("fec0::", 10, "a site-local address"),
  v6("ff00::", 8, "a multicast address"),
];

/** IPv6 forms that carry an IPv4 address: the IPv4 address is what the packets reach, so it is what gets judged. */
const V4_CARRIERS: { prefix: Block; shift: bigint }[] = [
  { prefix: v6("::ffff:0:0", 96, "IPv4-mapped"), shift: 0n },
  { prefix: v6("64:ff9b::", 96, "NAT64"), shift: 0n },
  { prefix: v6("::", 96, "IPv4-compatible"), shift: 0n },
  { prefix: v6("2002::", 16, "6to4"), shift: 80n },
];

/** Why `address` (an IPv4 or IPv6 literal) must not be fetched from, or undefined when it is a public address. */
export function blockedReason(address: string): string | undefined {
  const bare = address.replace(/^\[|\]$/g, "").replace(/%.*$/, "");
  const family = isIP(bare);
  if (family === 4) return matchBlock(V4_BLOCKS, ipv4ToBigInt(bare), 32);
  if (family !== 6) return "not an IP address";
  const value = ipv6ToBigInt(bare);
  const direct = matchBlock(V6_BLOCKS, value, 128);
  if (direct) return direct;
  for (const { prefix, shift } of V4_CARRIERS) {
    if (inBlock(prefix, value, 128)) {
      const embedded = (value >> shift) & 0xffffffffn;
      const why = matchBlock(V4_BLOCKS, embedded, 32);
      return why && `${why} (in ${prefix.why} form)`;
    }
  }
  return undefined;
}

/** The URL a client submitted, refused with the queue's own errors before any name is resolved. */
export function parseSource(source: string): URL {
  let url: URL;
  try {
    url = new URL(source);
  } catch {
    throw new InvalidUrlError(source);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new UnsupportedSchemeError(url.protocol);
  return url;
}

/** Throws BlockedAddressError unless every address the URL's host resolves to is public (or the policy allows all). */
export async function assertPublicUrl(url: URL, policy: AddressPolicy): Promise<void> {
  if (policy.allowPrivateNetworks) return;
  const hostname = url.hostname.replace(/^\[|\]$/g, "");
  let addresses: string[];
  if (isIP(hostname)) {
    addresses = [hostname];
  } else {
    try {
      addresses = await (policy.resolve ?? resolveAll)(hostname);
    } catch (err) {
      throw new UnresolvableHostError(url.href, hostname, err);
    }
  }
  // All of them: a client connecting to the host may be handed any one.
  for (const address of addresses) {
    const why = blockedReason(address);
    if (why) throw new BlockedAddressError(url.href, address, why);
  }
}

/** The queue's `checkRedirect`: a public source must not bounce the download to a private address. */
export function redirectGuard(policy: AddressPolicy): ((url: URL) => Promise<void>) | undefined {
  return policy.allowPrivateNetworks ? undefined : (url) => assertPublicUrl(url, policy);
}

/**
 * A `net.connect` lookup that refuses private addresses at the moment of connecting. The URL checks above resolve the
 * name earlier; a name whose DNS answer changes in between (rebinding) is caught here.
 */
export function guardedLookup(): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, []);
      for (const { address } of addresses) {
        const why = blockedReason(address);
        if (why) return callback(new BlockedAddressError(`the host ${hostname}`, address, why), []);
      }
      if (options.all) return callback(null, addresses);
      const first = addresses[0];
      if (!first) return callback(Object.assign(new Error(`${hostname} has no address`), { code: "ENOTFOUND" }), []);
      callback(null, first.address, first.family);
    });
  };
}

/**
 * The dispatcher a service queue or a shared queue's worker downloads through, unless private networks are allowed:
 * connections checked. An address given as such (`http://127.0.0.1/`) is checked here too, since no lookup sees it:
 * a worker takes jobs that no API node of its own checked. `ca`: more CAs to trust, as the queue's option.
 */
export function guardedDispatcher(connectTimeoutMs = 30_000, ca?: DownloadQueueOptions["ca"]): Agent {
  const cas = checkCa(ca);
  const connect = buildConnector({
    timeout: connectTimeoutMs,
    lookup: guardedLookup(),
    ...(cas && { secureContext: trustedContext(cas) }),
  });
  return new Agent({
    connect: (options, callback) => {
      const host = options.hostname.replace(/^\[|\]$/g, "");
      const why = isIP(host) ? blockedReason(host) : undefined;
      if (why) return callback(new BlockedAddressError(`the host ${host}`, host, why), null);
      connect(options, callback);
    },
    connectTimeout: connectTimeoutMs,
  });
}

async function resolveAll(hostname: string): Promise<string[]> {
  const results = await dnsLookupAll(hostname, { all: true, verbatim: true });
  return results.map((result) => result.address);
}

function matchBlock(blocks: Block[], value: bigint, width: number): string | undefined {
  return blocks.find((block) => inBlock(block, value, width))?.why;
}

function inBlock(block: Block, value: bigint, width: number): boolean {
  const shift = BigInt(width - block.bits);
  return value >> shift === block.base >> shift;
}

function v4(address: string, bits: number, why: string): Block {
  return { base: ipv4ToBigInt(address), bits, why };
}

function v6(address: string, bits: number, why: string): Block {
  return { base: ipv6ToBigInt(address), bits, why };
}

function ipv4ToBigInt(address: string): bigint {
  return address.split(".").reduce((sum, octet) => (sum << 8n) | BigInt(Number(octet)), 0n);
}

/** Expects a valid IPv6 literal (net.isIP said so), possibly ending in a dotted IPv4 address. */
function ipv6ToBigInt(address: string): bigint {
  let text = address.toLowerCase();
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted?.[1]) {
    const value = ipv4ToBigInt(dotted[1]);
    text = `${text.slice(0, -dotted[1].length)}${(value >> 16n).toString(16)}:${(value & 0xffffn).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const headGroups = head ? head.split(":") : [];
  const tailGroups = tail ? tail.split(":") : [];
  const zeros = tail === undefined ? [] : Array(8 - headGroups.length - tailGroups.length).fill("0");
  return [...headGroups, ...zeros, ...tailGroups].reduce((sum, group) => (sum << 16n) | BigInt(`0x${group}`), 0n);
}
