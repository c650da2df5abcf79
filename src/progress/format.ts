/** Text laid out in terminal columns: the lines of the progress board and the summary table. */
import stringWidth from "string-width";
import { formatBytes, formatSpeed } from "../units.js";

const graphemes = new Intl.Segmenter();

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
