import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { DlqError, InvalidArgumentError } from "../src/errors.js";
import { openSecret, SecretMismatchError, sealSecret, secretFromEnv } from "../src/redis/secret.js";

const SECRET = "correct-horse-battery-staple-42";
const TOKEN = "hf_plaintextTOKEN0123456789abcdef";

function assertMismatch(open: () => unknown): void {
  assert.throws(open, (err: unknown) => {
    assert.ok(err instanceof SecretMismatchError, `expected SecretMismatchError, got ${String(err)}`);
    assert.ok(err instanceof DlqError);
    assert.equal(err.code, "DLQ_ERR_SECRET_MISMATCH");
    assert.match(err.message, /DLQUEUE_SECRET differs/);
    assert.match(err.message, /same DLQUEUE_SECRET on every API node and worker/);
    assert.doesNotMatch(err.message, new RegExp(TOKEN), "the plaintext is never in the message");
    assert.doesNotMatch(err.message, new RegExp(SECRET), "the secret is never in the message");
    return true;
  });
}

/** The sealed value with one byte of its ciphertext (or IV, or tag) inverted, re-encoded as a valid value. */
function flipByte(sealed: string, part: 1 | 2 | 3, index = 0): string {
  const parts = sealed.split(".");
  const bytes = Buffer.from(parts[part] as string, "base64url");
  bytes[index] = (bytes[index] as number) ^ 0xff;
  parts[part] = bytes.toString("base64url");
  return parts.join(".");
}

describe("sealSecret / openSecret", () => {
  test("a sealed value opens to the plaintext, unicode and empty values included", () => {
    for (const plaintext of [TOKEN, JSON.stringify({ headers: { Authorization: "Bearer x" } }), "ключ 🔑", ""]) {
      const sealed = sealSecret(SECRET, plaintext);
      assert.match(sealed, /^v1\.[\w-]{16}\.[\w-]{22}\.[\w-]*$/);
      assert.equal(openSecret(SECRET, sealed), plaintext);
    }
  });

  test("two seals of one value use different IVs and give different ciphertexts", () => {
    const a = sealSecret(SECRET, TOKEN).split(".");
    const b = sealSecret(SECRET, TOKEN).split(".");
    assert.notEqual(a[1], b[1], "IV");
    assert.notEqual(a[3], b[3], "ciphertext");
  });

  test("the sealed value does not contain the plaintext, in any of its encodings", () => {
    const sealed = sealSecret(SECRET, TOKEN);
    assert.ok(!sealed.includes(TOKEN));
    assert.ok(!sealed.includes(Buffer.from(TOKEN).toString("base64url")));
    const decoded = Buffer.concat(
      sealed
        .split(".")
        .slice(1)
        .map((part) => Buffer.from(part, "base64url")),
    );
    assert.equal(decoded.indexOf(TOKEN), -1);
    assert.ok(!sealed.includes(SECRET) && decoded.indexOf(SECRET) === -1, "the secret is not in it either");
  });

  test("a different secret cannot open it", () => {
    const sealed = sealSecret(SECRET, TOKEN);
    assertMismatch(() => openSecret(`${SECRET}!`, sealed));
  });

  test("a flipped byte in the ciphertext, the IV or the tag is refused", () => {
    const sealed = sealSecret(SECRET, TOKEN);
    assertMismatch(() => openSecret(SECRET, flipByte(sealed, 3)));
    assertMismatch(() => openSecret(SECRET, flipByte(sealed, 3, TOKEN.length - 1)));
    assertMismatch(() => openSecret(SECRET, flipByte(sealed, 1)));
    assertMismatch(() => openSecret(SECRET, flipByte(sealed, 2, 15)));
  });

  test("malformed values are refused: wrong version, missing parts, a cut tag, stray characters", () => {
    const sealed = sealSecret(SECRET, TOKEN);
    const [, iv, tag, ciphertext] = sealed.split(".") as [string, string, string, string];
    assertMismatch(() => openSecret(SECRET, `v2.${iv}.${tag}.${ciphertext}`));
    assertMismatch(() => openSecret(SECRET, `v1.${iv}.${tag}`));
    assertMismatch(() => openSecret(SECRET, `v1.${iv}.${tag.slice(0, 16)}.${ciphertext}`));
    assertMismatch(() => openSecret(SECRET, `v1.${iv}.${tag}.${ciphertext}!`));
    assertMismatch(() => openSecret(SECRET, TOKEN));
  });
});

describe("secretFromEnv", () => {
  test("DLQUEUE_SECRET when set; unset or empty means none", () => {
    assert.equal(secretFromEnv({ DLQUEUE_SECRET: SECRET }), SECRET);
    assert.equal(secretFromEnv({ DLQUEUE_SECRET: "x".repeat(16) }), "x".repeat(16));
    assert.equal(secretFromEnv({}), undefined);
    assert.equal(secretFromEnv({ DLQUEUE_SECRET: "" }), undefined);
  });

  test("a value shorter than 16 characters is refused, without echoing it", () => {
    const short = "tooShort-15chrs";
    assert.equal(short.length, 15);
    assert.throws(
      () => secretFromEnv({ DLQUEUE_SECRET: short }),
      (err: unknown) => {
        assert.ok(err instanceof InvalidArgumentError);
        assert.equal(err.code, "DLQ_ERR_INVALID_ARGUMENT");
        assert.match(err.message, /at least 16 characters/);
        assert.match(err.message, /openssl rand -hex 32/);
        assert.ok(!err.message.includes(short));
        return true;
      },
    );
  });

  test("reads process.env by default", () => {
    const saved = process.env.DLQUEUE_SECRET;
    process.env.DLQUEUE_SECRET = SECRET;
    try {
      assert.equal(secretFromEnv(), SECRET);
    } finally {
      if (saved === undefined) delete process.env.DLQUEUE_SECRET;
      else process.env.DLQUEUE_SECRET = saved;
    }
  });
});
