/** A run's way to stop when a reader closes our output (`| head`): main.ts's EPIPE handler calls it. */

/** While a run goes on: stops it as Ctrl-C would. */
let onOutputClosed: (() => void) | undefined;

/** A run says how to stop it when the output goes away, and undefined once it is over. */
export function whenOutputCloses(stop: (() => void) | undefined): void {
  onOutputClosed = stop;
}

/**
 * Called when a write to stdout or stderr failed because its reader went away (`| head`). Returns false when no
 * run is going on, so the caller exits at once.
 */
export function outputClosed(): boolean {
  onOutputClosed?.();
  return onOutputClosed !== undefined;
}
