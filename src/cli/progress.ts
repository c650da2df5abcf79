/**
 * Live progress on stderr: the TypeScript form of InvokeAI's TqdmProgress, plus the shared board the `dlqueue` CLI
 * draws its total line on. Every line lives on one module-level cli-progress MultiBar, so several downloads (and
 * several ConsoleProgress instances) redraw one block of the terminal instead of fighting over the cursor.
 */
import { basename } from "node:path";
import { MultiBar, type SingleBar } from "cli-progress";
import stringWidth from "string-width";
import type { DownloadJob, MultiFileDownloadJob } from "../job.js";
import { formatBytes } from "../units.js";

/** One line of the board. */
export interface BoardLine {
  render(width: number): string;
  /** What the line says for good once its work is over; undefined while it is live. */
  final(): string | undefined;
}

/** The running MultiBar and its lines; the MultiBar exists only while at least one line is live. */
let multiBar: MultiBar | undefined;
const bars = new Map<BoardLine, SingleBar>();
let sweepQueued = false;

/** Draws `line` on the shared board until its `final()` says it is over. Callers check that stderr is a TTY. */
export function showLine(line: BoardLine): void {
  multiBar ??= createBoard();
  bars.set(line, multiBar.create(1, 0, { line }));
}

function createBoard(): MultiBar {
  const board = new MultiBar({
    stream: process.stderr,
    fps: 10,
    // Keep wrapping on (cli-progress then cuts lines to the width itself): an abandoned board leaves the terminal
    // exactly as it found it, cursor and all.
    linewrap: true,
    hideCursor: false,
    gracefulExit: false,
    // A line logged above the board shifts it down; redrawing every line each frame repairs that at once.
    forceRedraw: true,
    format: (_options, params, payload: { line: BoardLine }) =>
      payload.line.final() ?? payload.line.render(params.maxWidth - 1),
  });
  // The redraw timer must not keep a process alive: a line whose job never leaves "running" (a multi-file job of a
  // stopped queue stays "running") would otherwise hang the program after its downloads are over. cli-progress
  // re-arms the timer just before these two events. What the last frame missed is drawn on beforeExit.
  const unrefTimer = () => (board as unknown as { timer?: NodeJS.Timeout | null }).timer?.unref();
  board.on("start", unrefTimer);
  board.on("update-post", unrefTimer);
  // Lines are finished after a frame, never inside one: MultiBar.remove() redraws, and a redraw nested in a redraw
  // leaks its timer.
  board.on("update-pre", () => {
    if (sweepQueued) return;
    sweepQueued = true;
    queueMicrotask(() => {
      sweepQueued = false;
      sweepLines();
    });
  });
  process.on("beforeExit", settleBeforeExit);
  return board;
}

/** Nothing else will run: retire what has ended, and leave whatever has not as it stands, on its own lines. */
function settleBeforeExit(): void {
  sweepLines();
  if (multiBar) closeBoard(multiBar);
}

function closeBoard(board: MultiBar): void {
  // The last lines are drawn in place (format() shows their final text) rather than logged, so no blank line is
  // left where the board was.
  board.update();
  board.stop();
  bars.clear();
  multiBar = undefined;
  process.off("beforeExit", settleBeforeExit);
}

/**
 * Retires every line whose work is over: its final text scrolls up above the live lines, and the board stops (its
 * timer with it) when no line is left. Runs every frame; call it to settle the board at once.
 */
export function sweepLines(): void {
  const board = multiBar;
  if (!board) return;
  for (const [line, bar] of bars) {
    const text = line.final();
    if (text === undefined) continue;
    if (bars.size === 1) {
      closeBoard(board);
      return;
    }
    bars.delete(line);
    board.log(`${text}\n`);
    board.remove(bar);
  }
}

/** Writes a message to stderr without tearing the live lines: above them while the board is up, else directly. */
export function printAbove(text: string): void {
  const line = text.endsWith("\n") ? text : `${text}\n`;
  if (multiBar) multiBar.log(clearedRows(line, process.stderr.columns || 80));
  else process.stderr.write(line);
}

/**
 * The board's log clears only the first row it writes on; the rows below still hold the last frame's bars. Each row
 * of the message (its lines, and a long line's wrapped parts) clears its own row first, so no old bar shows through.
 */
export function clearedRows(text: string, columns: number): string {
  const rows: string[] = [];
  for (const line of text.replace(/\n$/, "").split("\n")) {
    let row = "";
    let rowWidth = 0;
    for (const { segment } of graphemes.segment(line)) {
      const partWidth = stringWidth(segment);
      if (rowWidth + partWidth > columns) {
        rows.push(row);
        row = "";
        rowWidth = 0;
      }
      row += segment;
      rowWidth += partWidth;
    }
    rows.push(row);
  }
  return rows
    .map((row) => `\u001b[2K${row}`)
    .join("\n")
    .concat("\n");
}

/**
 * A progress bar per download on stderr: `download({ ..., onProgress: new ConsoleProgress().update })`. One
 * instance can serve many jobs, single- or multi-file. The bar shows the file name, percent, bytes, speed and ETA;
 * it stops by itself once the job is no longer running (completed, failed, cancelled, or the queue was stopped),
 * leaving its final line. Draws nothing when stderr is not a terminal.
 */
export class ConsoleProgress {
  readonly #lines = new Map<number, JobLine>();

  /** An arrow property, so `progress.update` can be handed over as a callback without binding. */
  readonly update = (job: DownloadJob | MultiFileDownloadJob): void => {
    if (!process.stderr.isTTY) return;
    let line = this.#lines.get(job.id);
    if (!line || line.final() !== undefined) {
      // A job is only drawn while it runs; a paused job that runs again gets a fresh bar.
      if (job.status !== "running") return;
      line = new JobLine(job);
      this.#lines.set(job.id, line);
      showLine(line);
    }
  };
}

/** Seconds of history behind a speed: long enough to smooth bursts, short enough to follow the link. */
const SPEED_WINDOW_MS = 3000;

/** Bytes per second over the last few seconds, so the speed follows the link rather than the whole history. */
export class SpeedMeter {
  readonly #samples: { at: number; bytes: number }[] = [];

  sample(bytes: number): void {
    const at = performance.now();
    this.#samples.push({ at, bytes });
    // Keep one sample older than the window so the rate always spans the whole window.
    while (this.#samples.length > 2 && at - (this.#samples[1] as { at: number }).at > SPEED_WINDOW_MS) {
      this.#samples.shift();
    }
  }

  /** undefined until two samples at least 200 ms apart exist. */
  bytesPerSecond(): number | undefined {
    const first = this.#samples[0];
    const last = this.#samples.at(-1);
    if (!first || !last || last.at - first.at < 200) return undefined;
    return ((last.bytes - first.bytes) * 1000) / (last.at - first.at);
  }
}

type ProgressJob = DownloadJob | MultiFileDownloadJob;

class JobLine implements BoardLine {
  readonly #job: ProgressJob;
  readonly #meter = new SpeedMeter();
  readonly #startedAt = performance.now();
  #endedAt: number | undefined;
  /** Bytes already on disk when this bar appeared (a resumed partial): not part of this run's speed. */
  readonly #startBytes: number;

  constructor(job: ProgressJob) {
    this.#job = job;
    this.#startBytes = job.bytes;
  }

  get #name(): string {
    const job = this.#job;
    return basename(job.downloadPath ?? job.dest);
  }

  render(width: number): string {
    const job = this.#job;
    // Sampled per frame rather than per progress callback, so a stalled link shows its speed falling.
    this.#meter.sample(job.bytes);
    const speed = this.#meter.bytesPerSecond();
    const eta = speed && job.totalBytes > 0 ? (job.totalBytes - job.bytes) / speed : undefined;
    return formatLine(width, {
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
      return formatLine(width, {
        ...line,
        totalBytes: job.bytes,
        bytesOnly: true,
        speed: seconds > 0 && moved > 0 ? moved / seconds : undefined,
        note: `done in ${formatDuration(seconds)}`,
      });
    }
    const why = job.status === "error" ? "failed" : job.status === "cancelled" ? "cancelled" : "stopped";
    return formatLine(width, { ...line, note: why });
  }
}

/** What one board line shows; the numbers sit in fixed-width slots so the columns of all lines line up. */
export interface LineFields {
  name: string;
  bytes: number;
  /** 0 when unknown: no bar and no percent then. */
  totalBytes: number;
  /** Only the bytes, not "bytes/total" (a finished file). */
  bytesOnly?: boolean;
  speed?: number;
  /** ETA, "done in 0:12", "failed"... */
  note?: string;
  /** totalBytes is an estimate (some sizes are not known yet): shown as `~8.80 MB`. */
  estimated?: boolean;
}

const PERCENT_WIDTH = 4;
const AMOUNT_WIDTH = 15;
const SPEED_WIDTH = 10;
/** The numbers' columns and the single spaces after each. */
const NUMBERS_WIDTH = PERCENT_WIDTH + AMOUNT_WIDTH + SPEED_WIDTH + 3;
const NAME_MIN = 16;
const NAME_MAX = 32;
const BAR_MIN = 4;
const BAR_MAX = 30;

/**
 * `name  [█████░░░░░]   42%   126 MB/300 MB  12.3 MB/s ETA 0:14`, never wider than `width` columns, measured as the
 * terminal draws them (a CJK character or an emoji takes two): a line wider than the terminal wraps, and every
 * redraw of the board would then scroll the screen.
 */
export function formatLine(width: number, line: LineFields): string {
  const known = line.totalBytes > 0;
  const fraction = known ? Math.min(1, line.bytes / line.totalBytes) : 0;
  const total = `${line.estimated ? "~" : ""}${formatBytes(line.totalBytes)}`;
  const amount = known && !line.bytesOnly ? `${formatBytes(line.bytes)}/${total}` : formatBytes(line.bytes);
  const note = line.note ?? "";
  const numbers = [
    (known ? `${Math.floor(fraction * 100)}%` : "").padStart(PERCENT_WIDTH),
    amount.padStart(AMOUNT_WIDTH),
    (line.speed === undefined ? "" : formatSpeed(line.speed)).padStart(SPEED_WIDTH),
    note,
  ].join(" ");
  // Room for an ETA ("ETA 0:14") at 80 columns, for "done in 0:12" on wider terminals: the name comes first (at 80
  // columns a sharded name keeps its shard number), then the bar. A longer note takes its room from this line's bar
  // only, so the names of all lines stay aligned.
  const noteRoom = width >= 90 ? 12 : 8;
  const room = width - NUMBERS_WIDTH - noteRoom - 2;
  const nameWidth = Math.max(NAME_MIN, Math.min(NAME_MAX, room - BAR_MIN - 7));
  const barWidth = Math.min(BAR_MAX, room - nameWidth - 3) - Math.max(0, note.length - noteRoom);
  const bar = barWidth < BAR_MIN ? "" : known ? `[${drawBar(fraction, barWidth)}] ` : " ".repeat(barWidth + 3);
  return cutToWidth(`${fitWidth(line.name, nameWidth)}  ${bar}${numbers}`, width).trimEnd();
}

function drawBar(fraction: number, width: number): string {
  const full = Math.round(fraction * width);
  return "█".repeat(full) + "░".repeat(width - full);
}

/** Columns a string takes on a terminal: 2 for CJK characters and most emoji, 0 for combining marks. */
export function displayWidth(text: string): number {
  return stringWidth(text);
}

const graphemes = new Intl.Segmenter();

/**
 * Pads or cuts `text` to `width` columns. A cut takes out the middle and keeps both ends, the end included: names
 * of one model's shards differ in the middle (`model-00001-of-00004.safetensors` becomes `model-00001-….safetensors`).
 */
export function fitWidth(text: string, width: number): string {
  const textWidth = stringWidth(text);
  if (textWidth <= width) return text + " ".repeat(width - textWidth);
  const parts = Array.from(graphemes.segment(text), (part) => part.segment);
  const headRoom = Math.ceil((width - 1) / 2);
  let head = "";
  let headWidth = 0;
  for (const part of parts) {
    const partWidth = stringWidth(part);
    if (headWidth + partWidth > headRoom) break;
    head += part;
    headWidth += partWidth;
  }
  let tail = "";
  let tailWidth = 0;
  for (const part of parts.reverse()) {
    const partWidth = stringWidth(part);
    if (headWidth + 1 + tailWidth + partWidth > width) break;
    tail = part + tail;
    tailWidth += partWidth;
  }
  // A wide character that did not fit leaves one column: pad it, so the columns after the name stay aligned.
  return `${head}…${tail}${" ".repeat(width - headWidth - 1 - tailWidth)}`;
}

/** The longest start of `text` that fits in `width` columns. */
function cutToWidth(text: string, width: number): string {
  if (stringWidth(text) <= width) return text;
  let out = "";
  let outWidth = 0;
  for (const { segment } of graphemes.segment(text)) {
    const partWidth = stringWidth(segment);
    if (outWidth + partWidth > width) break;
    out += segment;
    outWidth += partWidth;
  }
  return out;
}

export function formatSpeed(bytesPerSecond: number): string {
  return `${formatBytes(bytesPerSecond)}/s`;
}

/** `0:07`, `12:34`, `1:02:03`. */
export function formatDuration(seconds: number): string {
  const total = Math.max(0, Math.round(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/** A line at least this often for a download in progress, whatever its size. */
const PLAIN_INTERVAL_MS = 30_000;

/**
 * Progress for a log file, a CI log or `docker build` (stdout not a terminal): no bars, no escape sequences, and a
 * calm rate as wget's: a line when a download starts, at each tenth of it or every 30 s, and when it ends.
 */
export class PlainProgress {
  readonly #write: (line: string) => void;
  readonly #jobs = new Map<number, { startedAt: number; startBytes: number; lastAt: number; lastTenth: number }>();

  constructor(write: (line: string) => void) {
    this.#write = write;
  }

  start(job: DownloadJob): void {
    const now = performance.now();
    const tenth = this.#tenth(job);
    this.#jobs.set(job.id, { startedAt: now, startBytes: job.bytes, lastAt: now, lastTenth: tenth });
    // A file complete before this run gets one line, when it is reported completed.
    if (job.totalBytes > 0 && job.bytes >= job.totalBytes) return;
    const size = job.totalBytes > 0 ? formatBytes(job.totalBytes) : "size unknown";
    const resumed = job.bytes > 0 ? `, resuming at ${formatBytes(job.bytes)}` : "";
    this.#write(`${fileName(job)}: started (${size}${resumed}) from ${job.source}`);
  }

  progress(job: DownloadJob): void {
    const state = this.#jobs.get(job.id);
    if (!state || job.status !== "running") return;
    const now = performance.now();
    const tenth = this.#tenth(job);
    if (tenth <= state.lastTenth && now - state.lastAt < PLAIN_INTERVAL_MS) return;
    if (tenth >= 10) return;
    state.lastAt = now;
    state.lastTenth = tenth;
    const seconds = (now - state.startedAt) / 1000;
    const speed = seconds >= 0.2 ? `  ${formatSpeed((job.bytes - state.startBytes) / seconds)}` : "";
    const amount =
      job.totalBytes > 0
        ? `${Math.floor((job.bytes / job.totalBytes) * 100)}%  ${formatBytes(job.bytes)} of ${formatBytes(job.totalBytes)}`
        : formatBytes(job.bytes);
    this.#write(`${fileName(job)}: ${amount}${speed}`);
  }

  end(job: DownloadJob): void {
    const state = this.#jobs.get(job.id);
    this.#jobs.delete(job.id);
    const name = fileName(job);
    if (job.status === "completed") {
      if (!state || (job.bytes === state.startBytes && job.bytes > 0)) {
        this.#write(`${name}: already complete (${formatBytes(job.bytes)})`);
        return;
      }
      const seconds = (performance.now() - state.startedAt) / 1000;
      const moved = job.bytes - state.startBytes;
      const speed = seconds > 0 && moved > 0 ? `, ${formatSpeed(moved / seconds)}` : "";
      this.#write(`${name}: done, ${formatBytes(job.bytes)} in ${formatDuration(seconds)}${speed}`);
    } else if (job.status === "error") {
      this.#write(`${name}: failed: ${job.errorType}`);
    } else if (job.status === "cancelled") {
      this.#write(`${name}: cancelled`);
    }
  }

  #tenth(job: DownloadJob): number {
    return job.totalBytes > 0 ? Math.floor((job.bytes / job.totalBytes) * 10) : 0;
  }
}

/** The file a job writes, or would write: named by its URL until the server has named it. */
export function fileName(job: DownloadJob): string {
  if (job.downloadPath) return basename(job.downloadPath);
  const last = new URL(job.source).pathname.split("/").filter(Boolean).at(-1);
  return last ? decodeURIComponentSafe(last) : job.source;
}

function decodeURIComponentSafe(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
