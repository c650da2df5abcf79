/**
 * Numbers typed by users, on the command line and in input files: one parser, so `-j 1.5`, `--timeout 1e3` and
 * `priority=0x10` are refused alike, with a message that says what to type instead.
 */
import { InvalidArgumentError } from "commander";

/** A number that does not parse or is out of range; the message is a sentence to show after the option's name. */
export class NumberSyntaxError extends Error {
  override name = "NumberSyntaxError";
}

export interface NumberRules {
  /** Whole numbers only. */
  integer?: boolean;
  min?: number;
  /** The bound itself is refused (a timeout of 0 seconds). */
  minExclusive?: boolean;
  /** Needs `min` as well. */
  max?: number;
}

/** Plain decimal notation only: `5`, `-2`, `0.5`; not `1e3`, `0x10`, ` 5` or `Infinity`. */
export function parseNumber(text: string, rules: NumberRules = {}): number {
  const pattern = rules.integer ? /^-?\d+$/ : /^-?(\d+\.?\d*|\.\d+)$/;
  const kind = rules.integer ? "a whole number" : "a number";
  const bound =
    rules.min === undefined
      ? ""
      : rules.max !== undefined
        ? ` from ${rules.min} to ${rules.max}`
        : rules.minExclusive
          ? ` greater than ${rules.min}`
          : ` of at least ${rules.min}`;
  const value = Number(text);
  if (!pattern.test(text) || !Number.isFinite(value) || (rules.integer && !Number.isSafeInteger(value))) {
    throw new NumberSyntaxError(`Give ${kind}${bound}, not "${text}".`);
  }
  const tooSmall = rules.min !== undefined && (rules.minExclusive ? value <= rules.min : value < rules.min);
  if (tooSmall || (rules.max !== undefined && value > rules.max)) {
    throw new NumberSyntaxError(`Give ${kind}${bound}, not "${text}".`);
  }
  return value;
}

const RATE_UNITS: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };

export const RATE_SYNTAX = "bytes per second, or with k, M or G (1024-based, as wget and curl count): 500k, 2M, 1.5MB";

/**
 * A rate limit as wget, curl and aria2 spell it, in bytes per second: `500k`, `2M`, `1.5MB`, `800000`. The suffixes
 * are 1024-based, as theirs are: `1M` is 1,048,576 bytes per second. A trailing `B`, `iB` or `/s` is allowed.
 */
export function parseRate(text: string): number {
  const match = /^(\d+\.?\d*|\.\d+)\s*([kmg]?)(?:i?b)?(?:\/s)?$/i.exec(text.trim());
  const unit = RATE_UNITS[match?.[2]?.toLowerCase() ?? ""];
  const bytes = match && unit ? Math.floor(Number(match[1]) * unit) : Number.NaN;
  if (!(bytes >= 1)) throw new NumberSyntaxError(`Give a rate in ${RATE_SYNTAX}; not "${text}".`);
  return bytes;
}

/** Commander's parser for a whole-number option. */
export function integerArgument(min?: number, max?: number): (value: string) => number {
  return (value) => commanderNumber(() => parseNumber(value, { integer: true, min, max }));
}

/** Commander's parser for an option in seconds. */
export function secondsArgument(min: number, minExclusive = false): (value: string) => number {
  return (value) => commanderNumber(() => parseNumber(value, { min, minExclusive }));
}

/** Commander's parser for a rate option. */
export function rateArgument(value: string): number {
  return commanderNumber(() => parseRate(value));
}

function commanderNumber(parse: () => number): number {
  try {
    return parse();
  } catch (err) {
    if (err instanceof NumberSyntaxError) throw new InvalidArgumentError(err.message);
    throw err;
  }
}
