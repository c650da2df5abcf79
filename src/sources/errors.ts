import { DlqError } from "../errors.js";

/**
 * Errors of model sources (`hf://`, Civitai). Each names the thing that is wrong (the repo, the revision, the path,
 * the model version) because a bare "404" after resolving a repo id tells the user nothing about which part to fix.
 * None of them ever carries a token: messages end up in job JSON, logs and the web page.
 *
 * `errorType` follows huggingface_hub's exception names where one exists, since InvokeAI shows a job's `error_type`
 * and its users already know those names.
 */

/** `hf://…` or a Civitai reference that cannot be parsed. */
export class InvalidSourceError extends DlqError {
  constructor(source: string, why: string, expected: string, code = "DLQ_ERR_INVALID_SOURCE") {
    super(`Invalid source ${JSON.stringify(source)}: ${why}. Expected ${expected}.`, code);
  }

  override get errorType(): string {
    return "InvalidSource";
  }
}

export type HubMissing = "repo" | "revision" | "path";

const MISSING_CODE: Record<HubMissing, string> = {
  repo: "DLQ_ERR_HF_REPO_NOT_FOUND",
  revision: "DLQ_ERR_HF_REVISION_NOT_FOUND",
  path: "DLQ_ERR_HF_ENTRY_NOT_FOUND",
};

const MISSING_TYPE: Record<HubMissing, string> = {
  repo: "RepositoryNotFoundError",
  revision: "RevisionNotFoundError",
  path: "EntryNotFoundError",
};

/** The hub says the repo, the revision or the path does not exist (its X-Error-Code says which). */
export class HubNotFoundError extends DlqError {
  readonly missing: HubMissing;

  constructor(missing: HubMissing, message: string) {
    super(message, MISSING_CODE[missing]);
    this.missing = missing;
  }

  override get errorType(): string {
    return MISSING_TYPE[this.missing];
  }
}

/** A gated or private repo the token (or its absence) does not open. */
export class HubAccessError extends DlqError {
  readonly status: number;

  constructor(message: string, status: number) {
    super(message, "DLQ_ERR_HF_ACCESS_DENIED");
    this.status = status;
  }

  override get errorType(): string {
    return "GatedRepoError";
  }
}

/** include/exclude (or an empty repo/folder) left nothing to download: a job with no parts is never what was meant. */
export class NoMatchingFilesError extends DlqError {
  constructor(message: string) {
    super(message, "DLQ_ERR_NO_MATCHING_FILES");
  }

  override get errorType(): string {
    return "NoMatchingFiles";
  }
}

/** An API answered 200 with something that is not what its documentation promises. */
export class BadApiResponseError extends DlqError {
  constructor(url: string, what: string) {
    super(
      `${url} answered with ${what}; is the endpoint a Hugging Face hub / Civitai API?`,
      "DLQ_ERR_BAD_API_RESPONSE",
    );
  }

  override get retryable(): boolean {
    // A proxy or a hub mid-deploy can answer an HTML page once; the next try usually gets JSON.
    return true;
  }
}

export class CivitaiNotFoundError extends DlqError {
  constructor(message: string) {
    super(message, "DLQ_ERR_CIVITAI_NOT_FOUND");
  }

  override get errorType(): string {
    return "CivitaiNotFound";
  }
}

export class CivitaiAccessError extends DlqError {
  readonly status: number;

  constructor(message: string, status: number) {
    super(message, "DLQ_ERR_CIVITAI_ACCESS_DENIED");
    this.status = status;
  }

  override get errorType(): string {
    return "CivitaiAccessDenied";
  }
}
