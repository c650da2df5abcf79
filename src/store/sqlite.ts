import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import type Database from "better-sqlite3";
import type { JobStore, StoredJob } from "./store.js";

// Loaded when a store is opened: a queue kept in memory (a quiet `dlqueue get`, most library users) never pays for
// the native module (30 ms), and a Node whose ABI the addon was not built for can still run it.
const require = createRequire(import.meta.url);

/** Progress is the only high-rate write; at most once a second is plenty to resume from. */
const PROGRESS_FLUSH_MS = 1000;

/**
 * The embedded default store: one SQLite file in WAL mode. State changes commit at once (a torn write cannot
 * leave a half-updated job: SQLite's journal rolls it back); progress is batched into one transaction a second.
 */
export class SqliteJobStore implements JobStore {
  readonly #db: Database.Database;
  readonly #pendingProgress = new Map<number, [bytes: number, totalBytes: number]>();
  readonly #statements;
  #flushTimer: NodeJS.Timeout | undefined;

  constructor(readonly path: string) {
    mkdirSync(dirname(path), { recursive: true });
    const open: typeof Database = require("better-sqlite3");
    this.#db = new open(path);
    this.#db.pragma("journal_mode = WAL");
    // NORMAL in WAL mode stays consistent on a crash; it may lose the last commits on a power cut, which only
    // means resuming a little further back.
    this.#db.pragma("synchronous = NORMAL");
    this.#db.exec(`
      CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, data TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
      INSERT OR IGNORE INTO meta (key, value) VALUES ('next_id', 0);
    `);
    this.#statements = {
      all: this.#db.prepare<[], { data: string }>("SELECT data FROM jobs ORDER BY id"),
      put: this.#db.prepare<[number, string]>("INSERT OR REPLACE INTO jobs (id, data) VALUES (?, ?)"),
      get: this.#db.prepare<[number], { data: string }>("SELECT data FROM jobs WHERE id = ?"),
      delete: this.#db.prepare<[number]>("DELETE FROM jobs WHERE id = ?"),
      nextId: this.#db.prepare<[], { value: number }>(
        "UPDATE meta SET value = value + 1 WHERE key = 'next_id' RETURNING value - 1 AS value",
      ),
    };
  }

  load(): StoredJob[] {
    return this.#statements.all.all().map((row) => JSON.parse(row.data) as StoredJob);
  }

  nextId(): number {
    return (this.#statements.nextId.get() as { value: number }).value;
  }

  put(job: StoredJob): void {
    this.#pendingProgress.delete(job.id);
    this.#statements.put.run(job.id, JSON.stringify(job));
  }

  progress(id: number, bytes: number, totalBytes: number): void {
    this.#pendingProgress.set(id, [bytes, totalBytes]);
    this.#flushTimer ??= setTimeout(() => this.#flushProgress(), PROGRESS_FLUSH_MS).unref();
  }

  delete(ids: readonly number[]): void {
    this.#db.transaction(() => {
      for (const id of ids) this.#statements.delete.run(id);
    })();
  }

  close(): void {
    this.#flushProgress();
    this.#db.close();
  }

  #flushProgress(): void {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    if (this.#pendingProgress.size === 0) return;
    this.#db.transaction(() => {
      for (const [id, [bytes, totalBytes]] of this.#pendingProgress) {
        const row = this.#statements.get.get(id);
        if (row) this.#statements.put.run(id, JSON.stringify({ ...JSON.parse(row.data), bytes, totalBytes }));
      }
    })();
    this.#pendingProgress.clear();
  }
}
