/**
 * Request bodies as InvokeAI's FastAPI service takes them: JSON without type conversion, schema failures answered
 * 422 with pydantic's `{"detail": [{"loc", "msg", "type"}]}` list (its clients parse it), each `msg` saying what to
 * send instead.
 */
import type { FastifySchemaValidationError } from "fastify";
import { DlqError } from "../errors.js";

export class InvalidBodyError extends DlqError {
  constructor(message: string) {
    super(message, "DLQ_ERR_INVALID_BODY");
  }
}

/** Keys that reach an object's prototype in careless code downstream; no body of this API has a use for them. */
const FORBIDDEN_KEYS = new Set(["__proto__", "constructor", "prototype"]);

/** The body as JSON; throws InvalidBodyError when it is empty, not JSON, or names a forbidden key anywhere. */
export function parseJsonBody(text: string): unknown {
  if (text.trim() === "")
    throw new InvalidBodyError("The body is empty but Content-Type says JSON: send a JSON object.");
  try {
    return JSON.parse(text, (key, value) => {
      if (FORBIDDEN_KEYS.has(key)) {
        throw new InvalidBodyError(`The field ${key} is not allowed in a request body; remove it.`);
      }
      return value;
    });
  } catch (err) {
    if (err instanceof InvalidBodyError) throw err;
    throw new InvalidBodyError(`The body is not valid JSON (${(err as Error).message}); send a JSON object.`);
  }
}

export interface ValidationIssue {
  loc: (string | number)[];
  msg: string;
  type: string;
}

/** Where the request's parts are called in FastAPI's `loc`. */
const LOCATION: Record<string, string> = { body: "body", querystring: "query", params: "path", headers: "header" };

export function validationIssues(
  errors: FastifySchemaValidationError[],
  context: string | undefined,
): ValidationIssue[] {
  // A failed "if" only says which branch applied; the branch's own failures say what to change.
  return errors
    .filter((error) => error.keyword !== "if")
    .map((error) => {
      const path = error.instancePath
        .split("/")
        .slice(1)
        .map((segment) => segment.replace(/~1/g, "/").replace(/~0/g, "~"))
        .map((segment) => (/^\d+$/.test(segment) ? Number(segment) : segment));
      if (error.keyword === "required") path.push(String(error.params.missingProperty));
      return { loc: [LOCATION[context ?? "body"] ?? context ?? "body", ...path], ...describe(error, path) };
    });
}

function describe(error: FastifySchemaValidationError, path: (string | number)[]): { msg: string; type: string } {
  const field = path.length === 0 ? "The body" : dotted(path);
  const { data, params } = error as FastifySchemaValidationError & { data?: unknown };
  switch (error.keyword) {
    case "required":
      return { msg: `Field required: add ${field}.`, type: "missing" };
    case "type": {
      const expected = ([] as string[]).concat(params.type as string | string[]);
      const hint =
        typeof data === "string" && expected.includes("integer") && /^-?\d+$/.test(data)
          ? `; send ${data} without quotes`
          : "";
      return {
        msg: `${field} must be ${expected.map(typeName).join(" or ")}, not ${shown(data)}${hint}.`,
        type: `${TYPE_LABEL[expected[0] ?? ""] ?? "value"}_type`,
      };
    }
    case "minimum":
    case "maximum": {
      const atLeast = error.keyword === "minimum";
      return {
        msg: `${field} must be ${atLeast ? "at least" : "at most"} ${params.limit}, not ${shown(data)}.`,
        type: atLeast ? "greater_than_equal" : "less_than_equal",
      };
    }
    case "minLength":
      return { msg: `${field} must not be empty.`, type: "string_too_short" };
    case "maxLength":
      return {
        msg: `${field} is ${String(data).length} characters long; at most ${params.limit} are accepted.`,
        type: "string_too_long",
      };
    case "minItems":
      return { msg: `${field} must list at least ${params.limit} item; it is empty.`, type: "too_short" };
    default:
      return { msg: `${field} ${error.message ?? "is not valid"}.`, type: "value_error" };
  }
}

const TYPE_LABEL: Record<string, string> = {
  integer: "int",
  number: "float",
  string: "string",
  boolean: "bool",
  array: "list",
  object: "dict",
  null: "none",
};

function typeName(type: string): string {
  return type === "integer"
    ? "a whole number"
    : type === "array"
      ? "a list"
      : type === "object"
        ? "an object"
        : type === "null"
          ? "null"
          : `a ${type}`;
}

/** `parts[0].url` */
function dotted(path: (string | number)[]): string {
  return path.map((part, i) => (typeof part === "number" ? `[${part}]` : i === 0 ? part : `.${part}`)).join("");
}

function shown(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "an object";
  if (typeof value === "string") {
    const text = value.length > 40 ? `${value.slice(0, 40)}…` : value;
    return `the string ${JSON.stringify(text)}`;
  }
  return `${typeof value === "number" ? "the number " : ""}${String(value)}`;
}
