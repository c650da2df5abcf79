/**
 * Tests that need a system package. On a fresh machine without it their suite is skipped with one line naming the
 * apt package, so `npm ci && npm test` passes; under CI=true (.ci/run installs the packages) a missing package fails
 * the suite instead, so CI can never pass by skipping.
 */
import assert from "node:assert/strict";

export interface SystemPackage {
  /** The suite's `skip` option: the reason to give, or false to run it. */
  skip: string | false;
  /** For the suite's `before` hook: fails, naming the package, when it is missing. */
  require: () => void;
}

export function systemPackage(what: string, apt: string, present: boolean): SystemPackage {
  const missing = `${what} is missing: apt-get install ${apt}`;
  return {
    skip: present || process.env.CI === "true" ? false : missing,
    require: () => assert.ok(present, `${missing} (CI=true requires it; .ci/run installs it)`),
  };
}
