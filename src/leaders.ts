interface Keyed {
  readonly job: { readonly source: string; readonly dest: string };
}

/**
 * The job that transfers each (source, dest) right now, so a duplicate attaches to it instead of fetching again.
 * Keyed by source, then by dest only when one source goes to several places: no composite key string per job.
 */
export class LeaderIndex<T extends Keyed> {
  readonly #bySource = new Map<string, T | Map<string, T>>();

  get({ source, dest }: { source: string; dest: string }): T | undefined {
    const entry = this.#bySource.get(source);
    if (entry instanceof Map) return entry.get(dest);
    return entry?.job.dest === dest ? entry : undefined;
  }

  set(leader: T): void {
    const { source, dest } = leader.job;
    const entry = this.#bySource.get(source);
    if (entry instanceof Map) {
      entry.set(dest, leader);
    } else if (entry === undefined || entry.job.dest === dest) {
      this.#bySource.set(source, leader);
    } else {
      const byDest = new Map([[entry.job.dest, entry]]);
      this.#bySource.set(source, byDest.set(dest, leader));
    }
  }

  /** Forgets `leader`, unless another job has taken its place. */
  delete(leader: T): void {
    const { source, dest } = leader.job;
    const entry = this.#bySource.get(source);
    if (entry === leader) {
      this.#bySource.delete(source);
    } else if (entry instanceof Map && entry.get(dest) === leader) {
      entry.delete(dest);
      if (entry.size === 0) this.#bySource.delete(source);
    }
  }
}
