import { jobToWire, multiJobToWire, type WireJob, type WireMultiFileJob } from "./wire.js";

export const DownloadJobStatus = {
  Waiting: "waiting",
  Running: "running",
  Paused: "paused",
  Completed: "completed",
  Cancelled: "cancelled",
  Error: "error",
} as const;
export type DownloadJobStatus = (typeof DownloadJobStatus)[keyof typeof DownloadJobStatus];

const TERMINAL: ReadonlySet<DownloadJobStatus> = new Set(["completed", "cancelled", "error"]);

export function isTerminal(status: DownloadJobStatus): boolean {
  return TERMINAL.has(status);
}

/** What a caller can read about one download. The queue is the only writer. */
export class DownloadJob {
  status: DownloadJobStatus = DownloadJobStatus.Waiting;
  downloadPath: string | undefined;
  jobStarted: Date | undefined;
  jobEnded: Date | undefined;
  bytes = 0;
  totalBytes = 0;
  contentType: string | undefined;
  errorType: string | undefined;
  error: string | undefined;

  constructor(
    readonly id: number,
    readonly source: string,
    readonly dest: string,
    readonly priority: number,
    /** Expected sha256 (hex) and size in bytes, when the caller knows them. */
    readonly sha256?: string,
    readonly size?: number,
  ) {}

  get cancelled(): boolean {
    return this.status === DownloadJobStatus.Cancelled;
  }

  get inTerminalState(): boolean {
    return isTerminal(this.status);
  }

  toJSON(): WireJob {
    return jobToWire(this);
  }
}

/** Where a model job's files came from (queue.modelDownload()); absent on a plain multi-file job. */
export interface ModelOrigin {
  /** The model source, canonical: `hf://org/repo@rev/path`, `civitai://models/ID@VERSION`. */
  source: string;
  /** hf:// only: the commit every file comes from. */
  commit?: string;
  /** hf:// only: the `snapshots/<commit>` folder in the cache, or the dest folder. */
  snapshotPath?: string;
}

/** Several files under one root (a diffusers model); its state is derived from its parts. */
export class MultiFileDownloadJob {
  status: DownloadJobStatus = DownloadJobStatus.Waiting;
  errorType: string | undefined;
  error: string | undefined;
  readonly source: string | undefined;
  readonly commit: string | undefined;
  readonly snapshotPath: string | undefined;

  constructor(
    readonly id: number,
    readonly dest: string,
    readonly downloadPath: string,
    readonly downloadParts: readonly DownloadJob[],
    origin?: ModelOrigin,
  ) {
    this.source = origin?.source;
    this.commit = origin?.commit;
    this.snapshotPath = origin?.snapshotPath;
  }

  get bytes(): number {
    return this.downloadParts.reduce((sum, part) => sum + part.bytes, 0);
  }

  get totalBytes(): number {
    return this.downloadParts.reduce((sum, part) => sum + part.totalBytes, 0);
  }

  get cancelled(): boolean {
    return this.status === DownloadJobStatus.Cancelled;
  }

  get inTerminalState(): boolean {
    return isTerminal(this.status);
  }

  toJSON(): WireMultiFileJob {
    return multiJobToWire(this);
  }
}
