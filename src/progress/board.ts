/**
 * The shared board every live line is drawn on: one module-level cli-progress MultiBar, so several downloads (and
 * several ConsoleProgress instances, and the CLI's total line) redraw one block of the terminal instead of fighting
 * over the cursor.
 */
import { MultiBar, type SingleBar } from "cli-progress";
import { clearedRows } from "./format.js";

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
