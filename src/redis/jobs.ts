/**
 * The shared queue's job records in Redis, and every change of their state: API nodes (submit, cancel, pause,
 * resume, prune) and workers (start, progress, finish) both change jobs through this class, so the rules live in
 * one place. A record is the store's StoredJob (store/records.ts), its paths relative to the workers' root.
 *
 * BullMQ decides who runs what (priorities, locks, stalled jobs); the records say what happened, and outlive
 * BullMQ's own job entries. The `open` set (waiting or running) is what join() waits on.
 */
import type { Queue } from "bullmq";
import type { Redis } from "ioredis";
import { isTerminal } from "../job.js";
import type { StoredJob } from "../store/store.js";
import type { QueueEventName } from "../wire.js";
import { bullJobId, bullPriority, DISCARD, DISCARD_PRIORITY, FETCH, type Layout } from "./connection.js";

export type ControlAction = "cancel" | "pause";

export interface SharedJob {
  record: StoredJob;
  /** A cancel or pause asked for while a worker runs the job, until that worker carries it out. */
  control?: ControlAction;
  /** Per-job token and credential headers, sealed (redis/secret.ts); never in `record`. */
  sealed?: string;
  /** A multi-file job's part ids. */
  parts?: number[];
}

/** What workers and API nodes publish: an event of the queue, or a multi-file job that has settled. */
export type SharedMessage =
  | { event: QueueEventName; record: StoredJob }
  | { event: "multi_settled"; record: StoredJob };

export interface ControlMessage {
  id: number;
  action: ControlAction;
}

/** What a BullMQ job carries: the id, and enough for a dashboard (Bull Board) to show it. Never a secret. */
export interface FetchData {
  id: number;
  source?: string;
  dest?: string;
  /** DISCARD: the final path (relative to the root) whose partial files to delete. */
  path?: string;
}

/** How long resume() waits for the worker that paused a job to hand it back to BullMQ. */
const RELEASE_WAIT_MS = 5000;
const FIELDS = ["record", "control", "sealed", "parts"] as const;
/** Records read per round trip when listing: 10,000 jobs in ten. */
const CHUNK = 1000;

export class SharedJobs {
  constructor(
    readonly redis: Redis,
    readonly layout: Layout,
    readonly bull: Queue<FetchData>,
  ) {}

  /** Ids never repeat, across every API node and restart: Redis's INCR (AOF keeps it). Starts at 0, as locally. */
  async nextIds(count: number): Promise<number[]> {
    const last = await this.redis.incrby(this.layout.idCounter, count);
    return Array.from({ length: count }, (_, i) => last - count + i);
  }

  /**
   * Writes new jobs, then queues their files in BullMQ. A parent (multi-file) record carries its parts' ids.
   * If BullMQ refuses, the records go again, so no record waits for a file that is not queued.
   */
  async create(jobs: { record: StoredJob; sealed?: string; parts?: number[] }[]): Promise<void> {
    const tx = this.redis.multi();
    for (const { record, sealed, parts } of jobs) {
      const fields: Record<string, string> = { record: JSON.stringify(record) };
      if (sealed) fields.sealed = sealed;
      if (parts) fields.parts = JSON.stringify(parts);
      tx.hset(this.layout.job(record.id), fields);
      tx.zadd(this.layout.index, record.id, String(record.id));
      if (record.kind === "file" && record.status === "waiting") tx.sadd(this.layout.open, String(record.id));
    }
    await tx.exec();
    const files = jobs
      .map((job) => job.record)
      .filter((record) => record.kind === "file" && record.status === "waiting");
    try {
      await this.bull.addBulk(files.map((record) => fetchJob(record)));
    } catch (err) {
      await this.delete(jobs.map((job) => job.record.id)).catch(() => {});
      throw err;
    }
  }

  async get(id: number): Promise<SharedJob | undefined> {
    const [job] = await this.getMany([id]);
    return job;
  }

  /** The jobs with these ids, in that order; pruned ones are left out. */
  async getMany(ids: readonly number[]): Promise<SharedJob[]> {
    const found: SharedJob[] = [];
    for (let start = 0; start < ids.length; start += CHUNK) {
      const pipeline = this.redis.pipeline();
      for (const id of ids.slice(start, start + CHUNK)) pipeline.hmget(this.layout.job(id), ...FIELDS);
      const replies = (await pipeline.exec()) ?? [];
      for (const [err, values] of replies) {
        if (err) throw err;
        const [record, control, sealed, parts] = values as (string | null)[];
        if (!record) continue;
        found.push({
          record: JSON.parse(record) as StoredJob,
          control: (control ?? undefined) as ControlAction | undefined,
          sealed: sealed ?? undefined,
          parts: parts ? (JSON.parse(parts) as number[]) : undefined,
        });
      }
    }
    return found;
  }

  async all(): Promise<SharedJob[]> {
    const ids = await this.redis.zrange(this.layout.index, "0", "-1");
    return this.getMany(ids.map(Number));
  }

  /** Writes a record and tells every API node; the open set follows its status. */
  async put(record: StoredJob, event?: QueueEventName): Promise<void> {
    const tx = this.redis.multi().hset(this.layout.job(record.id), "record", JSON.stringify(record));
    if (record.kind === "file") {
      if (record.status === "waiting" || record.status === "running") tx.sadd(this.layout.open, String(record.id));
      else tx.srem(this.layout.open, String(record.id));
    }
    if (event) tx.publish(this.layout.events, JSON.stringify({ event, record } satisfies SharedMessage));
    await tx.exec();
  }

  async publishSettled(record: StoredJob): Promise<void> {
    await this.redis.publish(
      this.layout.events,
      JSON.stringify({ event: "multi_settled", record } satisfies SharedMessage),
    );
  }

  /** Clears a control once carried out, unless another was asked for meanwhile. */
  async clearControl(id: number, action: ControlAction): Promise<void> {
    await this.redis.eval(
      "if redis.call('HGET', KEYS[1], 'control') == ARGV[1] then redis.call('HDEL', KEYS[1], 'control') end",
      1,
      this.layout.job(id),
      action,
    );
  }

  /** True for the one caller that settles a multi-file job: two parts ending at once cannot both settle it. */
  async claimSettle(parentId: number, status: string): Promise<boolean> {
    return (await this.redis.hsetnx(this.layout.job(parentId), "settled", status)) === 1;
  }

  /** Waiting or running jobs left: 0 means join() is done. */
  async openCount(): Promise<number> {
    return this.redis.scard(this.layout.open);
  }

  /**
   * Cancels or pauses one file job wherever it is. Waiting: taken out of BullMQ (which fails while a worker holds
   * it) and settled here. Running: the control is set for the worker that runs it and published, and that worker
   * settles it. Returns false when a worker has it.
   */
  async stopWaiting(id: number, action: ControlAction): Promise<boolean> {
    const job = await this.get(id);
    if (!job || isTerminal(job.record.status)) return true;
    const { record } = job;
    if (record.status === "paused" && action === "pause") return true;
    if (record.status === "waiting" || record.status === "paused") {
      // 0 with the job still there means a worker holds its lock: it is starting; treat it as running.
      const removed = await this.bull.remove(bullJobId(id));
      if (removed === 1 || !(await this.bull.getJob(bullJobId(id)))) {
        await this.#settleStopped(record, action);
        return true;
      }
    }
    await this.redis
      .multi()
      .hset(this.layout.job(id), "control", action)
      .publish(this.layout.control, JSON.stringify({ id, action } satisfies ControlMessage))
      .exec();
    return false;
  }

  async #settleStopped(record: StoredJob, action: ControlAction): Promise<void> {
    const hadPartial = record.downloadPath !== undefined || record.bytes > 0;
    if (action === "pause") {
      await this.put({ ...record, status: "paused" }, "download_paused");
      return;
    }
    await this.put({ ...record, status: "cancelled", jobEnded: new Date().toISOString() }, "download_cancelled");
    if (hadPartial && record.downloadPath !== undefined) {
      // A partial left by an earlier run sits on the workers' disk: the first free worker deletes it.
      await this.bull.add(
        DISCARD,
        { id: record.id, path: record.downloadPath },
        {
          jobId: `${bullJobId(record.id)}-discard`,
          priority: DISCARD_PRIORITY,
          removeOnComplete: true,
          removeOnFail: 100,
        },
      );
    }
  }

  /** A paused job back to waiting, at its priority, FIFO after the jobs already waiting there. */
  async resume(id: number): Promise<void> {
    const job = await this.get(id);
    if (job?.record.status !== "paused") return;
    await this.redis.hdel(this.layout.job(id), "control");
    // The BullMQ entry of its last run would block the id. Its worker may still be finishing it (the pause is written
    // just before its processor returns): wait for BullMQ to let go.
    const deadline = Date.now() + RELEASE_WAIT_MS;
    while ((await this.bull.remove(bullJobId(id))) === 0 && (await this.bull.getJob(bullJobId(id)))) {
      if (Date.now() > deadline) throw new Error(`job ${id} is still held by a worker; resume it again in a moment.`);
      await new Promise((wake) => setTimeout(wake, 50));
    }
    const record: StoredJob = { ...job.record, status: "waiting" };
    await this.put(record);
    await this.bull.add(FETCH, fetchData(record), fetchOptions(record));
  }

  async delete(ids: readonly number[]): Promise<void> {
    if (ids.length === 0) return;
    for (let start = 0; start < ids.length; start += CHUNK) {
      const chunk = ids.slice(start, start + CHUNK);
      const tx = this.redis.multi();
      for (const id of chunk) tx.del(this.layout.job(id));
      tx.zrem(this.layout.index, ...chunk.map(String));
      tx.srem(this.layout.open, ...chunk.map(String));
      await tx.exec();
      await Promise.all(chunk.map((id) => this.bull.remove(bullJobId(id))));
    }
  }
}

function fetchData(record: StoredJob): FetchData {
  return { id: record.id, source: record.source, dest: record.dest };
}

function fetchOptions(record: StoredJob) {
  return {
    jobId: bullJobId(record.id),
    priority: bullPriority(record.priority),
    // dlqueue retries transient failures itself, inside one run; a BullMQ retry would start a second budget.
    attempts: 1,
    removeOnComplete: { count: 1000 },
    removeOnFail: { count: 1000 },
  };
}

function fetchJob(record: StoredJob) {
  return { name: FETCH, data: fetchData(record), opts: fetchOptions(record) };
}
