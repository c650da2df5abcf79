/**
 * The queue's events as Server-Sent Events. Every event gets the next number as its SSE `id`, and the last ones are
 * kept in a ring so a client that reconnects with `Last-Event-ID` is sent exactly what it missed. Progress is
 * coalesced per job to at most one event per interval (the newest bytes win); the other events of a job wait behind
 * a held progress event rather than overtake it, so a client sees each job's events in the order they happened.
 */
import type { ServerResponse } from "node:http";
import type { JobQueue } from "../queue-api.js";
import type { QueueEventName, QueueEventPayloads } from "../wire.js";

const EVENT_NAMES = Object.keys({
  download_started: true,
  download_progress: true,
  download_complete: true,
  download_error: true,
  download_cancelled: true,
  download_paused: true,
} satisfies Record<QueueEventName, true>) as QueueEventName[];

export interface HubEvent {
  id: number;
  event: QueueEventName;
  /** The payload, already JSON: serialized once however many clients listen. */
  data: string;
}

export interface EventHubOptions {
  /** Events kept for replay (default 2000). */
  capacity?: number;
  /** The shortest time between two progress events of one job (default 250 ms: 4 per second). */
  progressIntervalMs?: number;
  /**
   * The number before the first event (default: milliseconds since 1970 × 1000). Numbering from the clock makes a
   * restarted server's numbers larger than any its predecessor issued, so a client reconnecting with an old
   * Last-Event-ID is told to resync rather than replayed someone else's events.
   */
  firstId?: number;
}

interface Pending {
  event: QueueEventName;
  payload: QueueEventPayloads[QueueEventName];
}

/** Per job, while a progress event was published less than an interval ago. */
interface Held {
  timer: NodeJS.Timeout;
  items: Pending[];
}

export class EventHub {
  readonly #queue: JobQueue;
  readonly #capacity: number;
  readonly #intervalMs: number;
  readonly #ring: HubEvent[] = [];
  /** Index in #ring of the oldest event, once the ring is full. */
  #start = 0;
  #lastId: number;
  readonly #subscribers = new Set<(event: HubEvent) => void>();
  readonly #held = new Map<number, Held>();
  readonly #listeners: [QueueEventName, (payload: QueueEventPayloads[QueueEventName]) => void][];

  constructor(queue: JobQueue, options: EventHubOptions = {}) {
    this.#queue = queue;
    this.#capacity = options.capacity ?? 2000;
    this.#intervalMs = options.progressIntervalMs ?? 250;
    this.#lastId = options.firstId ?? Date.now() * 1000;
    this.#listeners = EVENT_NAMES.map((name) => [name, (payload) => this.#accept(name, payload)]);
    for (const [name, listener] of this.#listeners) queue.on(name, listener as never);
  }

  /** The id of the newest published event; `firstId` before the first. */
  get lastId(): number {
    return this.#lastId;
  }

  /**
   * The events after `lastId`, or undefined when they cannot all be given: too old for the ring, or an id this hub
   * never issued (the client last talked to an earlier server process).
   */
  since(lastId: number): HubEvent[] | undefined {
    if (!Number.isSafeInteger(lastId) || lastId < 0 || lastId > this.#lastId) return undefined;
    const oldest = this.#lastId - this.#ring.length + 1;
    if (lastId < oldest - 1) return undefined;
    const ordered = [...this.#ring.slice(this.#start), ...this.#ring.slice(0, this.#start)];
    return ordered.slice(lastId - oldest + 1);
  }

  /** Calls `listener` with every event published from now on; returns the unsubscribe function. */
  subscribe(listener: (event: HubEvent) => void): () => void {
    this.#subscribers.add(listener);
    return () => this.#subscribers.delete(listener);
  }

  /** Publishes whatever is held back and stops listening to the queue. */
  close(): void {
    for (const [name, listener] of this.#listeners) this.#queue.off(name, listener as never);
    for (const [jobId, held] of this.#held) {
      clearTimeout(held.timer);
      this.#held.delete(jobId);
      for (const item of held.items) this.#publish(item);
    }
  }

  #accept(event: QueueEventName, payload: QueueEventPayloads[QueueEventName]): void {
    const held = this.#held.get(payload.id);
    if (held) {
      const last = held.items.at(-1);
      if (event === "download_progress" && last?.event === "download_progress") last.payload = payload;
      else held.items.push({ event, payload });
      return;
    }
    this.#publish({ event, payload });
    if (event === "download_progress") this.#hold(payload.id, []);
  }

  #hold(jobId: number, items: Pending[]): void {
    const timer = setTimeout(() => this.#release(jobId), this.#intervalMs);
    // A held event must not keep a process alive that is otherwise done (close() publishes it anyway).
    timer.unref();
    this.#held.set(jobId, { timer, items });
  }

  /** The interval is over: publish what waited, up to the next progress event, which starts a new interval. */
  #release(jobId: number): void {
    const held = this.#held.get(jobId);
    if (!held) return;
    this.#held.delete(jobId);
    while (held.items.length > 0) {
      const item = held.items.shift() as Pending;
      this.#publish(item);
      if (item.event === "download_progress") {
        this.#hold(jobId, held.items);
        return;
      }
    }
  }

  #publish({ event, payload }: Pending): void {
    const hubEvent: HubEvent = { id: ++this.#lastId, event, data: JSON.stringify(payload) };
    if (this.#ring.length < this.#capacity) {
      this.#ring.push(hubEvent);
    } else {
      this.#ring[this.#start] = hubEvent;
      this.#start = (this.#start + 1) % this.#capacity;
    }
    for (const subscriber of this.#subscribers) subscriber(hubEvent);
  }
}

/** One event in the text/event-stream format. */
export function formatEvent(event: { id: number; event: string; data: string }): string {
  return `id: ${event.id}\nevent: ${event.event}\ndata: ${event.data}\n\n`;
}

/** Clients that read slower than this many bytes behind are cut off; they reconnect and replay from the ring. */
const MAX_BUFFERED_BYTES = 1024 * 1024;
const HEARTBEAT_MS = 15_000;

/**
 * Streams the hub to one response until either side closes: the missed events first (or a `resync` event when they
 * cannot be replayed, telling the client to reload the job list), then live ones.
 */
export function streamEvents(hub: EventHub, res: ServerResponse, lastEventId: string | undefined): () => void {
  res.write("retry: 2000\n\n");
  if (lastEventId !== undefined) {
    const missed = /^\d+$/.test(lastEventId.trim()) ? hub.since(Number(lastEventId)) : undefined;
    if (missed) {
      for (const event of missed) res.write(formatEvent(event));
    } else {
      const reason = "the events after Last-Event-ID are no longer available; reload the job list";
      res.write(formatEvent({ id: hub.lastId, event: "resync", data: JSON.stringify({ reason }) }));
    }
  }
  const unsubscribe = hub.subscribe((event) => {
    if (res.writableLength > MAX_BUFFERED_BYTES) {
      res.destroy();
      return;
    }
    res.write(formatEvent(event));
  });
  // Proxies and NATs drop connections that look idle.
  const heartbeat = setInterval(() => res.write(": ping\n\n"), HEARTBEAT_MS);
  const stop = () => {
    clearInterval(heartbeat);
    unsubscribe();
  };
  res.on("close", stop);
  return () => {
    stop();
    res.end();
  };
}
