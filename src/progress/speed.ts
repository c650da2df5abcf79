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
