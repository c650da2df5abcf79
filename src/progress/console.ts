/**
 * Live progress on stderr: the TypeScript form of InvokeAI's TqdmProgress, one line per job on the shared board.
 */
import { basename } from "node:path";
import type { DownloadJob, MultiFileDownloadJob } from "../job.js";
import { formatDuration } from "../units.js";
import type { BoardLine } from "./board.js";
import type { formatLine } from "./format.js";
import { SpeedMeter } from "./speed.js";

type Drawing = { showLine(line: BoardLine): void; formatLine: typeof formatLine };
/**
 * The board and its text widths (cli-progress, string-width: ~5 MB) load with the first bar drawn, so a program
 * that imports dlqueue and never shows one does not carry them.
 */
let drawing: Promise<Drawing> | undefined;
/** A bar whose board is still loading: not final, so no second bar starts for its job meanwhile. */
const pendingLine = { final: (): string | undefined => undefined };
const loadDrawing = (): Promise<Drawing> =>
  (drawing ??= Promise.all([import("./board.js"), import("./format.js")]).then(([board, format]) => ({
    showLine: board.showLine,
    formatLine: format.formatLine,
  })));

/**
 * A progress bar per download on stderr: `download({ ..., onProgress: new ConsoleProgress().update })`. One
 * instance can serve many jobs, single- or multi-file. The bar shows the file name, percent, bytes, speed and ETA;
 * it stops by itself once the job is no longer running (completed, failed, cancelled, or the queue was stopped),
 * leaving its final line. Draws nothing when stderr is not a terminal.
 */
export class ConsoleProgress {
  readonly #lines = new Map<number, Pick<JobLine, "final">>();
  readonly #names: ReadonlyMap<number, string> | undefined;

  /** `names`: what to call a job other than its file's name (a model's part, whose file may be a cache blob). */
  constructor(names?: ReadonlyMap<number, string>) {
    this.#names = names;
  }

  /** An arrow property, so `progress.update` can be handed over as a callback without binding. */
  readonly update = (job: DownloadJob | MultiFileDownloadJob): void => {
    if (!process.stderr.isTTY) return;
    const line = this.#lines.get(job.id);
    if (!line || line.final() !== undefined) {
      // A job is only drawn while it runs; a paused job that runs again gets a fresh bar.
      if (job.status !== "running") return;
      const name = this.#names?.get(job.id);
      // Held before the board loads, so a second callback meanwhile does not start a second bar.
      this.#lines.set(job.id, pendingLine);
      loadDrawing().then(
        (draw) => {
          const shown = new JobLine(job, draw.formatLine, name);
          this.#lines.set(job.id, shown);
          draw.showLine(shown);
        },
        (err) => process.emitWarning(`dlqueue: no progress bar (${err instanceof Error ? err.message : err})`),
      );
    }
  };
}

type ProgressJob = DownloadJob | MultiFileDownloadJob;

class JobLine implements BoardLine {
  readonly #job: ProgressJob;
  readonly #meter = new SpeedMeter();
  readonly #startedAt = performance.now();
  #endedAt: number | undefined;
  /** Bytes already on disk when this bar appeared (a resumed partial): not part of this run's speed. */
  readonly #startBytes: number;

  readonly #given: string | undefined;
  readonly #formatLine: typeof formatLine;

  constructor(job: ProgressJob, format: typeof formatLine, name?: string) {
    this.#job = job;
    this.#formatLine = format;
    this.#given = name;
    this.#startBytes = job.bytes;
  }

  get #name(): string {
    const job = this.#job;
    return this.#given ?? basename(job.downloadPath ?? job.dest);
  }

  render(width: number): string {
    const job = this.#job;
    // Sampled per frame rather than per progress callback, so a stalled link shows its speed falling.
    this.#meter.sample(job.bytes);
    const speed = this.#meter.bytesPerSecond();
    const eta = speed && job.totalBytes > 0 ? (job.totalBytes - job.bytes) / speed : undefined;
    return this.#formatLine(width, {
      name: this.#name,
      bytes: job.bytes,
      totalBytes: job.totalBytes,
      speed,
      note: eta === undefined ? undefined : `ETA ${formatDuration(eta)}`,
    });
  }

  final(): string | undefined {
    const job = this.#job;
    if (job.status === "running") return undefined;
    const width = (process.stderr.columns || 80) - 1;
    const line = { name: this.#name, bytes: job.bytes, totalBytes: job.totalBytes };
    if (job.status === "completed") {
      this.#endedAt ??= performance.now();
      const seconds = (this.#endedAt - this.#startedAt) / 1000;
      const moved = job.bytes - this.#startBytes;
      // Nothing seen moving (a file complete before this run, or one whose bar began at its last callback): no
      // speed rather than 0 B/s, which would say the link is dead.
      return this.#formatLine(width, {
        ...line,
        totalBytes: job.bytes,
        bytesOnly: true,
        speed: seconds > 0 && moved > 0 ? moved / seconds : undefined,
        note: `done in ${formatDuration(seconds)}`,
      });
    }
    const why = job.status === "error" ? "failed" : job.status === "cancelled" ? "cancelled" : "stopped";
    return this.#formatLine(width, { ...line, note: why });
  }
}
