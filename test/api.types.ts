/**
 * The public API's types, checked by `tsc --noEmit` and never run (the name does not end in .test.ts). Each
 * `@ts-expect-error` line is a misuse the types must refuse: if one ever compiles, tsc fails on the unused directive.
 */
import {
  DlqError,
  type DownloadCallbacks,
  type DownloadJob,
  DownloadJobStatus,
  DownloadQueue,
  type DownloadQueueOptions,
  type DownloadRequest,
  type EventBus,
  HubNotFoundError,
  InvalidArgumentError,
  isModelSource,
  type Logger,
  type ModelDownloadRequest,
  type MultiFileDownloadJob,
  type MultiFileDownloadRequest,
  type QueueEventPayloads,
  type QueueEvents,
  type RemoteFile,
  type TokenRule,
  type WireJob,
  type WireMultiFileJob,
} from "../src/index.js";

export function correctUse(logger: Logger, bus: EventBus): void {
  const tokens: TokenRule[] = [
    { url: /huggingface\.co/, token: "hf_x" },
    { url: "civitai\\.com", token: "c" },
  ];
  const options: DownloadQueueOptions = {
    maxParallelDownloads: 3,
    tokens,
    eventBus: bus,
    logger,
    retries: 0,
    connectionsPerFile: 4,
    fsync: false,
    store: "state/queue.db",
    checkRedirect: (url: URL) => {
      if (url.hostname === "localhost") throw new Error("no");
    },
    maxBytesPerSecond: 1_000_000,
    proxy: "http://proxy.example:3128",
    overwrite: true,
  };
  const queue = new DownloadQueue(options);

  const callbacks: DownloadCallbacks<DownloadJob> = {
    onStart: (job) => job.downloadPath,
    onProgress: async (job) => job.bytes / job.totalBytes,
    onError: (job, error) => `${job.errorType}: ${error.message}`,
  };
  const request: DownloadRequest = { source: new URL("https://example.com/a.bin"), dest: "models/", ...callbacks };
  const job: DownloadJob = queue.download(request);
  const status: DownloadJobStatus = job.status;
  const finished: boolean = status === DownloadJobStatus.Completed || job.inTerminalState;
  const wire: WireJob = job.toJSON();

  const parts: RemoteFile[] = [{ url: "https://example.com/unet/model.safetensors", path: "unet/model.safetensors" }];
  const multiRequest: MultiFileDownloadRequest = {
    parts,
    dest: "models/sdxl",
    priority: 1,
    onComplete: (multi: MultiFileDownloadJob) => multi.downloadParts.length,
  };
  const multi = queue.multifileDownload(multiRequest);
  const multiWire: WireMultiFileJob = multi.toJSON();
  const found: DownloadJob | MultiFileDownloadJob = queue.idToJob(multi.id);

  const modelRequest: ModelDownloadRequest = {
    source: "hf://stabilityai/sdxl-vae@main",
    include: ["*.safetensors", "*.json"],
    exclude: ["*.bin"],
    cache: true,
    accessToken: "hf_x",
    maxBytesPerSecond: 50_000_000,
    onComplete: (job: DownloadJob | MultiFileDownloadJob) => job.status,
  };
  const model: Promise<MultiFileDownloadJob> = queue.modelDownload(modelRequest);
  const civitai: Promise<MultiFileDownloadJob> = queue.modelDownload({
    source: "civitai://models/4384@128713",
    dest: "models/dreamshaper",
    allFiles: true,
    priority: 5,
  });
  const snapshot: Promise<string | undefined> = model.then((m) => m.snapshotPath ?? m.commit ?? m.source);
  const notFound: boolean = new Error() instanceof HubNotFoundError;
  const isModel: boolean = isModelSource("hf://org/repo");

  const onProgress = (payload: QueueEventPayloads["download_progress"]) => payload.current_bytes;
  queue.on("download_progress", onProgress);
  queue.on("download_error", (payload) => payload.error_type.length);
  const listener: (...args: QueueEvents["download_complete"]) => void = (payload) => payload.total_bytes;
  queue.once("download_complete", listener);

  queue.pauseJob(job);
  queue.resumeJob(job.id);
  queue.cancelJob(multi);
  const waited: Promise<DownloadJob> = queue.waitForJob(job, { timeoutMs: 1000 });
  const joined: Promise<void> = queue.join();
  const stopped: Promise<void> = queue.stop();
  const code: string = new InvalidArgumentError("x").code;
  const isOurs: boolean = new Error() instanceof DlqError;
  void [finished, wire, multiWire, found, waited, joined, stopped, code, isOurs, civitai, snapshot, notFound, isModel];
}

export function misuse(queue: DownloadQueue): void {
  // @ts-expect-error an option that does not exist
  new DownloadQueue({ maxParallel: 5 });
  // @ts-expect-error an option of the wrong type
  new DownloadQueue({ retries: "5" });

  // @ts-expect-error a request without a source
  queue.download({ dest: "models/" });
  // @ts-expect-error a request without a dest
  queue.download({ source: "https://example.com/a.bin" });
  // @ts-expect-error a callback that takes something other than the job
  queue.download({ source: "https://example.com/a.bin", dest: "models/", onComplete: (path: string) => path });
  // @ts-expect-error a single-file job's callback on a multi-file job
  queue.multifileDownload({ parts: [], dest: "m", onStart: (job: DownloadJob) => job.source });
  // @ts-expect-error a part needs a path
  queue.multifileDownload({ parts: [{ url: "https://example.com/a.bin" }], dest: "m" });

  // @ts-expect-error a model request field that does not exist
  queue.modelDownload({ source: "hf://org/repo", revision: "main" });
  // @ts-expect-error include is a list of patterns, not one
  queue.modelDownload({ source: "hf://org/repo", include: "*.safetensors" });
  // @ts-expect-error allFiles is a boolean
  queue.modelDownload({ source: "civitai://models/1", dest: "m", allFiles: "yes" });
  // @ts-expect-error a model request without a source
  queue.modelDownload({ dest: "m" });
  // @ts-expect-error modelDownload() resolves the source first: its job is a promise
  const notYet: MultiFileDownloadJob = queue.modelDownload({ source: "hf://org/repo" });

  const job = queue.download({ source: "https://example.com/a.bin", dest: "models/" });
  // @ts-expect-error a status that does not exist
  const typo: DownloadJobStatus = "canceled";
  // @ts-expect-error comparing with a status that does not exist
  const never = job.status === "complete";
  // @ts-expect-error the queue is the only writer of a job's fields
  job.id = 3;
  // @ts-expect-error an event that does not exist
  queue.on("download_finished", () => {});
  // @ts-expect-error a payload field the event does not have
  queue.on("download_cancelled", (payload) => payload.error);
  // @ts-expect-error waitForJob takes a job, not an id
  queue.waitForJob(job.id);
  void [typo, never, notYet];
}
