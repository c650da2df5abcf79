/**
 * Per-job tokens and credential headers on the shared queue are stored sealed: AES-256-GCM under a key derived from
 * DLQUEUE_SECRET, which every API node and worker holds and Redis never sees. GCM's tag makes a wrong secret or an
 * altered value fail to open instead of yielding garbage that would be sent as a token.
 */
import { createCipheriv, createDecipheriv, randomBytes, scryptSync } from "node:crypto";
import { DlqError, InvalidArgumentError } from "../errors.js";

const VERSION = "v1";
// Fixed, not random: every node must derive the same key from the same secret without sharing anything else.
const SALT = "dlqueue/redis/v1";
const SCRYPT_N = 2 ** 14;
const KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const MIN_SECRET_CHARS = 16;

/** A sealed value this process cannot open: sealed under another secret, or changed since. */
export class SecretMismatchError extends DlqError {
  constructor() {
    super(
      "A sealed token of this job could not be opened: this worker's DLQUEUE_SECRET differs from the one of the API " +
        "node that queued the job (or the sealed value was altered in Redis). Set the same DLQUEUE_SECRET on every " +
        "API node and worker, then queue the job again.",
      "DLQ_ERR_SECRET_MISMATCH",
    );
  }
}

// scrypt is deliberately slow (tens of ms); a worker opens one sealed value per job, so each secret is derived once.
const keys = new Map<string, Buffer>();

function keyFor(secret: string): Buffer {
  let key = keys.get(secret);
  if (key === undefined) {
    key = scryptSync(secret, SALT, KEY_BYTES, { N: SCRYPT_N });
    keys.set(secret, key);
  }
  return key;
}

/** `v1.<iv>.<tag>.<ciphertext>`, each base64url; a fresh random IV per call, as GCM requires. */
export function sealSecret(secret: string, plaintext: string): string {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv("aes-256-gcm", keyFor(secret), iv, { authTagLength: TAG_BYTES });
  const ciphertext = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
  return [VERSION, iv, cipher.getAuthTag(), ciphertext].map((part) => part.toString("base64url")).join(".");
}

export function openSecret(secret: string, sealed: string): string {
  const parts = sealed.split(".");
  if (parts.length !== 4 || parts[0] !== VERSION) throw new SecretMismatchError();
  const [iv, tag, ciphertext] = parts.slice(1).map(decodeStrict);
  if (iv?.length !== IV_BYTES || tag?.length !== TAG_BYTES || ciphertext === undefined) {
    throw new SecretMismatchError();
  }
  // authTagLength pins the tag to 16 bytes: a shorter tag would be accepted otherwise and is easier to forge.
  const decipher = createDecipheriv("aes-256-gcm", keyFor(secret), iv, { authTagLength: TAG_BYTES });
  decipher.setAuthTag(tag);
  try {
    return Buffer.concat([decipher.update(ciphertext), decipher.final()]).toString("utf8");
  } catch {
    throw new SecretMismatchError();
  }
}

/** Node's base64url decoder skips characters it does not know; a value that does not re-encode the same was altered. */
function decodeStrict(text: string): Buffer | undefined {
  const bytes = Buffer.from(text, "base64url");
  return bytes.toString("base64url") === text ? bytes : undefined;
}

/** DLQUEUE_SECRET, if set: an empty value means none; a short one is refused rather than guessed. */
export function secretFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const secret = env.DLQUEUE_SECRET;
  if (!secret) return undefined;
  if (secret.length < MIN_SECRET_CHARS) {
    throw new InvalidArgumentError(
      `DLQUEUE_SECRET is ${secret.length} characters long; it must be at least ${MIN_SECRET_CHARS} characters ` +
        "(e.g. the output of `openssl rand -hex 32`), the same value on every API node and worker.",
    );
  }
  return secret;
}
