/**
 * What `dlqueue get` draws for a person: the total line of the board and the summary table. Apart from get.ts so that
 * a quiet run (a script, a fresh process per file) never loads the terminal-width code (string-width sets up
 * Intl.Segmenter, 40 ms) nor the board.
 */
import type { DownloadJob } from "../job.js";
import { type BoardLine, printAbove, showLine, sweepLines } from "../progress/board.js";
import { ConsoleProgress } from "../progress/console.js";
import { displayWidth, fitWidth, formatLine } from "../progress/format.js";
import { SpeedMeter } from "../progress/speed.js";
import { formatBytes, formatDuration, formatSpeed } from "../units.js";
import { fileName } from "./plain.js";

export { ConsoleProgress, printAbove, showLine, sweepLines };

/** The first line of the board: every download of this run together. */
export class TotalLine implements BoardLine {
  readonly #meter = new SpeedMeter();
  #final: string | undefined;

  constructor(
    readonly jobs: readonly DownloadJob[],
    readonly resumedFrom: ReadonlyMap<number, number>,
    readonly startedAt: number,
    readonly title: string,
  ) {}

  render(width: number): string {
    const { name, bytes, totalBytes, fresh, estimated } = this.#tally();
    this.#meter.sample(fresh);
    const speed = this.#meter.bytesPerSecond();
    const eta = speed && totalBytes > 0 ? (totalBytes - bytes) / speed : undefined;
    return formatLine(width, {
      name,
      bytes,
      totalBytes,
      estimated,
      speed,
      note: eta === undefined ? undefined : `ETA ${estimated ? "~" : ""}${formatDuration(eta)}`,
    });
  }

  finalText(interrupted: boolean): string {
    const { name, bytes, totalBytes, fresh, estimated } = this.#tally();
    const seconds = (performance.now() - this.startedAt) / 1000;
    return formatLine((process.stderr.columns || 80) - 1, {
      name,
      bytes,
      totalBytes,
      estimated,
      speed: seconds > 0 && fresh > 0 ? fresh / seconds : undefined,
      note: interrupted ? "interrupted" : `done in ${formatDuration(seconds)}`,
    });
  }

  finish(text: string): void {
    this.#final = text;
  }

  final(): string | undefined {
    return this.#final;
  }

  /**
   * Failed and cancelled downloads are left out, so the rest can still reach 100%; failures are reported above.
   * A download whose size is not known yet counts as the average of the known ones (or what it already has, if
   * more): the bar and ETA stay, marked `~` as estimates, instead of vanishing until the last size is known.
   */
  #tally() {
    const counted = this.jobs.filter((job) => job.status !== "error" && job.status !== "cancelled");
    const completed = counted.filter((job) => job.status === "completed").length;
    const sizeOf = (job: DownloadJob) => Math.max(job.totalBytes, job.size ?? 0);
    const sized = counted.filter((job) => sizeOf(job) > 0 || job.status === "completed");
    const knownTotal = sized.reduce((sum, job) => sum + Math.max(sizeOf(job), job.bytes), 0);
    const average = sized.length > 0 ? knownTotal / sized.length : 0;
    let bytes = 0;
    let totalBytes = knownTotal;
    let fresh = 0;
    for (const job of counted) {
      bytes += job.bytes;
      fresh += job.bytes - (this.resumedFrom.get(job.id) ?? job.bytes);
      if (!sized.includes(job)) totalBytes += Math.max(average, job.bytes);
    }
    const estimated = sized.length < counted.length;
    return {
      name: `${this.title} ${completed}/${this.jobs.length} done`,
      bytes,
      // Nothing known to estimate from: no bar rather than a made-up one.
      totalBytes: estimated && average === 0 ? 0 : Math.round(totalBytes),
      fresh,
      estimated,
    };
  }
}

/**
 * One row per download; an unfinished one is timed up to `endedAt`, when the run stopped. Columns are measured in
 * terminal columns (a CJK name is twice its length wide); on a terminal, long names are cut to fit `columns`.
 */
export function summaryTable(
  jobs: readonly DownloadJob[],
  resumedFrom: ReadonlyMap<number, number>,
  names: ReadonlyMap<number, string>,
  endedAt: Date,
  columns?: number,
): string {
  const rows = jobs.map((job) => {
    const seconds = job.jobStarted
      ? ((job.jobEnded ?? endedAt).getTime() - job.jobStarted.getTime()) / 1000
      : undefined;
    const start = resumedFrom.get(job.id);
    const moved = start === undefined ? 0 : job.bytes - start;
    const size =
      job.status === "completed"
        ? formatBytes(job.bytes)
        : job.totalBytes > 0
          ? `${formatBytes(job.bytes)}/${formatBytes(job.totalBytes)}`
          : job.bytes > 0
            ? formatBytes(job.bytes)
            : "-";
    return [
      fileName(job, names),
      size,
      seconds === undefined ? "-" : formatDuration(seconds),
      // Too short to time (a millisecond) or nothing fetched in this run: no speed rather than a made-up one.
      seconds && seconds >= 0.001 && moved > 0 && job.status !== "error" ? formatSpeed(moved / seconds) : "-",
      statusText(job, start),
    ];
  });
  const header = ["File", "Size", "Time", "Avg speed", "Status"];
  const widths = header.map((title, column) =>
    Math.max(displayWidth(title), ...rows.map((row) => displayWidth(row[column] ?? ""))),
  );
  if (columns !== undefined) {
    const others = widths.slice(1).reduce((sum, width) => sum + width + 2, 0);
    widths[0] = Math.max(16, Math.min(widths[0] ?? 0, columns - 1 - others));
  }
  // Numbers are right-aligned so sizes and speeds line up by magnitude.
  const format = (row: string[]) =>
    row
      .map((cell, column) => {
        const width = widths[column] ?? 0;
        if (column === 0) return fitWidth(cell, width);
        const pad = " ".repeat(Math.max(0, width - displayWidth(cell)));
        return column <= 3 ? pad + cell : cell + pad;
      })
      .join("  ")
      .trimEnd();
  return `${[header, ...rows].map(format).join("\n")}\n`;
}

function statusText(job: DownloadJob, resumedFrom: number | undefined): string {
  switch (job.status) {
    case "completed":
      // Nothing fetched in this run: the file was already there, complete (not fetched again without --overwrite).
      if (resumedFrom === undefined || (resumedFrom === job.bytes && job.bytes > 0)) return "already complete";
      return resumedFrom > 0 ? `completed (resumed at ${formatBytes(resumedFrom)})` : "completed";
    case "error":
      return `error ${job.errorType}`;
    case "cancelled":
      return "cancelled";
    default:
      return job.bytes > 0 ? "interrupted" : "not started";
  }
}
