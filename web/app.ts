/**
 * The dlqueue page: the job list from GET /, kept live by the event stream, with speed and ETA measured from the
 * progress events. No framework: each job owns one list item that is updated in place, so a focused button keeps
 * its focus while progress streams in.
 */
// Types only, erased from the page: the job JSON and events as the library declares them (its build's .d.ts).
import type { QueueEventName, QueueEventPayloads, RestJob, RestMultiFileJob } from "dlqueue";

const API = "/api/v1/download_queue";
/** Sources the server resolves to a model's files (its schema's list); they may leave the folder empty. */
const MODEL_SOURCE = /^(hf:\/\/|civitai:\/\/|https?:\/\/(www\.)?civitai\.com\/models\/)/i;
const TOKEN_KEY = "dlqueue-token";
/** Every event the queue emits: a name missing here, or one it no longer has, fails the page's build. */
const EVENT_NAMES = Object.keys({
  download_started: true,
  download_progress: true,
  download_complete: true,
  download_error: true,
  download_cancelled: true,
  download_paused: true,
} satisfies Record<QueueEventName, true>) as QueueEventName[];

/** The fields of a job the page shows; unset ones are null as the API sends them (absent ones read the same). */
type WireJob = Pick<
  RestJob,
  "id" | "source" | "dest" | "priority" | "status" | "download_path" | "bytes" | "total_bytes" | "error_type"
>;

/** A multi-file job (a model: `source` is its hf:// or Civitai source) and its parts. */
type WireMulti = Pick<RestMultiFileJob, "id" | "dest" | "status" | "download_path" | "error_type"> & {
  source?: string;
  snapshot_path?: string;
  download_parts: WireJob[];
};

/** Any event's payload: each field beyond id and source is read only where its event carries it. */
type EventData = QueueEventPayloads["download_cancelled"] &
  Partial<QueueEventPayloads["download_progress"] & QueueEventPayloads["download_error"]>;

interface QueuedEvent {
  number: number;
  name: QueueEventName;
  data: EventData;
}

/** Speed is measured over this much recent history: long enough to be steady, short enough to follow changes. */
const SPEED_WINDOW_MS = 5000;

class JobView {
  readonly item = document.createElement("li");
  readonly #name = document.createElement("label");
  readonly #status = document.createElement("span");
  readonly #source = document.createElement("p");
  readonly #dest = document.createElement("p");
  readonly #progress = document.createElement("progress");
  readonly #stats = document.createElement("p");
  readonly #pause = button("Pause");
  readonly #resume = button("Resume");
  readonly #cancel = button("Cancel");
  /** (time, bytes) of recent progress, for the speed. */
  #samples: { at: number; bytes: number }[] = [];

  /** A multi-file job's row: titled by its model source, with its parts listed below the bar. */
  readonly parts: HTMLUListElement | undefined;
  readonly #title: string | undefined;

  constructor(
    public job: WireJob,
    multi?: { title: string | undefined },
  ) {
    this.#title = multi?.title;
    if (multi) {
      this.parts = document.createElement("ul");
      this.parts.className = "parts";
    }
    const progressId = `job-${job.id}-progress`;
    this.item.className = "job";
    this.#name.htmlFor = progressId;
    this.#name.className = "name";
    this.#progress.id = progressId;
    this.#status.className = "status";
    this.#source.className = "source";
    this.#dest.className = "dest";
    this.#stats.className = "stats";
    const head = document.createElement("div");
    head.className = "job-head";
    head.append(this.#name, this.#status);
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.append(this.#pause, this.#resume, this.#cancel);
    this.item.append(
      head,
      this.#source,
      this.#dest,
      this.#progress,
      this.#stats,
      ...(this.parts ? [this.parts] : []),
      actions,
    );
    this.#pause.addEventListener("click", () => act(this, "pause"));
    this.#resume.addEventListener("click", () => act(this, "resume"));
    this.#cancel.addEventListener("click", () => act(this, "cancel"));
    this.render();
  }

  get name(): string {
    return this.#title ?? displayName(this.job);
  }

  update(patch: Partial<WireJob>): void {
    const before = this.job.status;
    this.job = { ...this.job, ...patch };
    if (patch.bytes !== undefined) this.#sample(this.job.bytes);
    if (this.job.status !== "running") this.#samples = [];
    this.render();
    if (this.job.status !== before) announce(`${this.name}: ${statusText(this.job)}`);
  }

  render(): void {
    const { job } = this;
    const focused = this.item.contains(document.activeElement) ? document.activeElement : null;
    this.item.dataset.status = job.status;
    this.#name.textContent = this.name;
    this.#status.textContent = statusText(job);
    this.#source.textContent = job.source;
    this.#source.title = job.source;
    // Where the file goes: the file itself once the server has named it, else the folder or file asked for.
    this.#dest.textContent = `to ${job.download_path || job.dest}`;
    const total = job.total_bytes;
    if (job.status === "completed") {
      this.#progress.max = total > 0 ? total : 1;
      this.#progress.value = this.#progress.max;
    } else if (total > 0) {
      this.#progress.max = total;
      this.#progress.value = Math.min(job.bytes, total);
    } else if (job.status === "running") {
      // No value attribute: the indeterminate bar, until the server says how large the file is.
      this.#progress.removeAttribute("value");
    } else {
      // Waiting, paused, failed or cancelled with no size known: an empty bar, never one that looks busy.
      this.#progress.max = 1;
      this.#progress.value = 0;
    }
    this.#stats.textContent = this.#statsText();
    const active = job.status === "waiting" || job.status === "running";
    this.#pause.hidden = !active;
    this.#resume.hidden = job.status !== "paused";
    this.#cancel.hidden = !(active || job.status === "paused");
    for (const [control, verb] of [
      [this.#pause, "Pause"],
      [this.#resume, "Resume"],
      [this.#cancel, "Cancel"],
    ] as const) {
      control.setAttribute("aria-label", `${verb} ${this.name}`);
    }
    // A button that just disappeared (Pause becoming Resume) hands the focus on instead of dropping it.
    if (focused instanceof HTMLElement && focused.hidden) {
      const next = [this.#resume, this.#pause, this.#cancel].find((control) => !control.hidden);
      (next ?? jobsHeading()).focus();
    }
  }

  #sample(bytes: number): void {
    const now = performance.now();
    this.#samples.push({ at: now, bytes });
    while (this.#samples.length > 2 && now - (this.#samples[0]?.at ?? now) > SPEED_WINDOW_MS) this.#samples.shift();
  }

  /** Bytes per second over the recent samples, once there is enough history to mean something. */
  #speed(): number | undefined {
    const first = this.#samples[0];
    const last = this.#samples.at(-1);
    if (!first || !last || last.at - first.at < 500) return undefined;
    return ((last.bytes - first.bytes) * 1000) / (last.at - first.at);
  }

  #statsText(): string {
    const { job } = this;
    const total = job.total_bytes;
    const parts: string[] = [];
    if (total > 0) parts.push(`${Math.floor((Math.min(job.bytes, total) / total) * 100)}%`);
    parts.push(total > 0 ? `${formatBytes(job.bytes)} of ${formatBytes(total)}` : formatBytes(job.bytes));
    if (job.status === "running") {
      const speed = this.#speed();
      if (speed !== undefined) {
        parts.push(`${formatBytes(speed)}/s`);
        if (total > 0 && speed > 0) parts.push(`${formatDuration((total - job.bytes) / speed)} left`);
      }
    }
    if (job.status === "error" && job.error_type) parts.push(job.error_type);
    return parts.join(" · ");
  }
}

/** One row for a multi-file job: its bar and figures are its parts' sums; each part has a line below them. */
class MultiView {
  readonly view: JobView;
  readonly #lines = new Map<number, { label: HTMLSpanElement; bar: HTMLProgressElement }>();

  constructor(public multi: WireMulti) {
    this.view = new JobView(this.#summary(), { title: multi.source });
    this.#renderParts();
  }

  set(multi: WireMulti): void {
    this.multi = multi;
    this.#refresh();
  }

  part(id: number): WireJob | undefined {
    return this.multi.download_parts.find((part) => part.id === id);
  }

  updatePart(id: number, patch: Partial<WireJob>): void {
    const parts = this.multi.download_parts.map((part) => (part.id === id ? { ...part, ...patch } : part));
    this.multi = { ...this.multi, download_parts: parts };
    this.#refresh();
  }

  #refresh(): void {
    this.view.update(this.#summary());
    this.#renderParts();
  }

  /** The parts' state as one job: a failure or a running part shows first, completed only when all are. */
  #summary(): WireJob {
    const { multi } = this;
    const parts = multi.download_parts;
    const has = (status: WireJob["status"]) => parts.some((part) => part.status === status);
    const status: WireJob["status"] = has("error")
      ? "error"
      : parts.length > 0 && parts.every((part) => part.status === "completed")
        ? "completed"
        : has("running")
          ? "running"
          : has("cancelled")
            ? "cancelled"
            : has("paused")
              ? "paused"
              : "waiting";
    return {
      id: multi.id,
      source: multi.source ?? `${parts.length} files`,
      dest: multi.dest,
      priority: parts[0]?.priority ?? 10,
      status,
      download_path: multi.snapshot_path ?? multi.download_path,
      bytes: parts.reduce((sum, part) => sum + part.bytes, 0),
      // Unknown sizes count as nothing yet, as on the server.
      total_bytes: parts.reduce((sum, part) => sum + part.total_bytes, 0),
      error_type: multi.error_type ?? parts.find((part) => part.error_type)?.error_type ?? null,
    };
  }

  #renderParts(): void {
    const list = this.view.parts;
    if (!list) return;
    const root = `${this.multi.download_path.replace(/\/+$/, "")}/`;
    for (const part of this.multi.download_parts) {
      partOwner.set(part.id, this);
      let line = this.#lines.get(part.id);
      if (!line) {
        const item = document.createElement("li");
        line = { label: document.createElement("span"), bar: document.createElement("progress") };
        item.append(line.label, line.bar);
        list.append(item);
        this.#lines.set(part.id, line);
      }
      const path = part.download_path?.startsWith(root) ? part.download_path.slice(root.length) : displayName(part);
      const done = part.status === "completed";
      const percent =
        part.total_bytes > 0 ? Math.floor((Math.min(part.bytes, part.total_bytes) / part.total_bytes) * 100) : 0;
      line.label.textContent = `${path} · ${done ? "done" : part.status === "running" ? `${percent}%` : statusText(part)}`;
      line.bar.max = 100;
      line.bar.value = done ? 100 : percent;
      line.bar.setAttribute("aria-label", path);
    }
  }
}

const jobs = new Map<number, JobView>();
/** Multi-file jobs by id, and which one each part belongs to: parts have no row of their own. */
const multis = new Map<number, MultiView>();
const partOwner = new Map<number, MultiView>();
let token = sessionStorage.getItem(TOKEN_KEY) ?? undefined;
let events: EventSource | undefined;
/** Events that arrive while the job list loads; those newer than the list are applied after it. */
let pending: QueuedEvent[] | undefined;

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`the page lacks #${id}`);
  return found as T;
}

function jobsHeading(): HTMLElement {
  return element("jobs-heading");
}

function button(text: string): HTMLButtonElement {
  const control = document.createElement("button");
  control.type = "button";
  control.textContent = text;
  return control;
}

/** The file's own name once the server has chosen it (a dest naming a file included), else the URL's. */
function displayName(job: WireJob): string {
  const fromPath = (job.download_path ?? "").split("/").filter(Boolean).at(-1);
  if (fromPath) return fromPath;
  try {
    const fromUrl = new URL(job.source).pathname.split("/").filter(Boolean).at(-1);
    if (fromUrl) return decodeURIComponent(fromUrl);
  } catch {
    // Not a URL the browser parses: show it whole.
  }
  return job.source;
}

function statusText(job: WireJob): string {
  return job.status === "error" ? "failed" : job.status;
}

function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

function announce(text: string): void {
  element("announcer").textContent = text;
}

function setConnection(state: "live" | "connecting" | "offline" | "signin", text: string): void {
  const line = element("connection");
  line.dataset.state = state;
  line.textContent = text;
}

class AuthRequired extends Error {}

async function api(method: string, path: string, body?: unknown): Promise<Response> {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`${API}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    askForToken();
    throw new AuthRequired("the server needs the access token");
  }
  if (!response.ok) {
    const detail = await response
      .json()
      // 422s list each invalid field, as FastAPI does.
      .then((json: { detail?: string | { msg: string }[] }) =>
        Array.isArray(json.detail) ? json.detail.map((issue) => issue.msg).join(" ") : json.detail,
      )
      .catch(() => undefined);
    throw new Error(detail ?? `${method} ${path} failed with HTTP ${response.status}`);
  }
  return response;
}

function show(job: WireJob): JobView {
  let view = jobs.get(job.id);
  if (view) {
    view.update(job);
    return view;
  }
  view = new JobView(job);
  place(view);
  return view;
}

function showMulti(multi: WireMulti): JobView {
  const known = multis.get(multi.id);
  if (known) {
    known.set(multi);
    return known.view;
  }
  const row = new MultiView(multi);
  multis.set(multi.id, row);
  // A part shown as a job of its own before its multi-file job was known gives way to the multi-file row.
  for (const part of multi.download_parts) forget(part.id);
  place(row.view);
  return row.view;
}

function forget(id: number): void {
  jobs.get(id)?.item.remove();
  jobs.delete(id);
  const row = multis.get(id);
  if (!row) return;
  multis.delete(id);
  for (const part of row.multi.download_parts) partOwner.delete(part.id);
}

function place(view: JobView): void {
  const { job } = view;
  jobs.set(job.id, view);
  // Newest first: the one just added is where the eye is.
  const list = element<HTMLUListElement>("jobs");
  const after = [...jobs.values()].filter((other) => other.job.id > job.id).sort((a, b) => a.job.id - b.job.id)[0];
  list.insertBefore(view.item, after ? after.item.nextSibling : list.firstChild);
  showEmpty(undefined);
}

async function loadJobs(): Promise<void> {
  pending = [];
  try {
    const [response, multiResponse] = await Promise.all([api("GET", "/"), api("GET", "/multi/")]);
    const snapshotEvent = Number(response.headers.get("x-last-event-id") ?? 0);
    const list = (await response.json()) as WireJob[];
    const multiList = (await multiResponse.json()) as WireMulti[];
    const parts = new Set(multiList.flatMap((multi) => multi.download_parts.map((part) => part.id)));
    const singles = list.filter((job) => !parts.has(job.id));
    const present = new Set([...singles, ...multiList].map((job) => job.id));
    for (const id of [...jobs.keys()]) if (!present.has(id)) forget(id);
    for (const job of singles) show(job);
    for (const multi of multiList) showMulti(multi);
    showEmpty(jobs.size === 0 ? "No downloads yet." : undefined);
    const queued = pending;
    pending = undefined;
    for (const event of queued) if (event.number > snapshotEvent) apply(event);
  } finally {
    pending = undefined;
  }
}

/** Jobs being fetched whole, each with whether an event about it arrived while its answer was on the way. */
const fetching = new Map<number, boolean>();

/**
 * A job someone else submitted: fetch it whole (dest, priority) rather than guess from the event. An answer may
 * predate events that arrive while it travels (a quick cancel after the start), so those trigger one more fetch.
 */
function fetchJob(id: number): void {
  if (fetching.has(id)) {
    fetching.set(id, true);
    return;
  }
  fetching.set(id, false);
  // A new part may belong to a multi-file job submitted elsewhere, which then gets the row.
  Promise.all([api("GET", `/i/${id}`), api("GET", "/multi/")])
    .then(async ([response, multiResponse]) => {
      const job = (await response.json()) as WireJob | WireMulti;
      const owners = ((await multiResponse.json()) as WireMulti[]).filter(
        (multi) => multi.id === id || multi.download_parts.some((part) => part.id === id),
      );
      for (const multi of owners) showMulti(multi);
      if (owners.length === 0 && !("download_parts" in job)) show(job);
    })
    .catch(() => {})
    .finally(() => {
      const outdated = fetching.get(id);
      fetching.delete(id);
      if (outdated) fetchJob(id);
    });
}

function apply({ name, data }: QueuedEvent): void {
  const owner = partOwner.get(data.id);
  const part = owner?.part(data.id);
  if (owner && part && !fetching.has(data.id)) {
    owner.updatePart(data.id, eventPatch(name, data, part));
    return;
  }
  const view = jobs.get(data.id);
  if (!view || fetching.has(data.id)) {
    fetchJob(data.id);
    return;
  }
  view.update(eventPatch(name, data, view.job));
}

/** What an event changes in the job it is about. */
function eventPatch(name: QueueEventName, data: EventData, job: WireJob): Partial<WireJob> {
  const patch: Partial<WireJob> = {};
  if (data.download_path) patch.download_path = data.download_path;
  if (data.total_bytes) patch.total_bytes = data.total_bytes;
  switch (name) {
    case "download_started":
      patch.status = "running";
      break;
    case "download_progress":
      patch.bytes = data.current_bytes ?? job.bytes;
      break;
    case "download_complete":
      patch.status = "completed";
      patch.bytes = data.total_bytes ?? job.bytes;
      break;
    case "download_error":
      patch.status = "error";
      patch.error_type = data.error_type;
      break;
    case "download_cancelled":
      patch.status = "cancelled";
      break;
    case "download_paused":
      patch.status = "paused";
      patch.bytes = data.current_bytes ?? job.bytes;
      break;
  }
  return patch;
}

function connect(): void {
  events?.close();
  setConnection("connecting", "Connecting…");
  const url = token ? `${API}/events?token=${encodeURIComponent(token)}` : `${API}/events`;
  const source = new EventSource(url);
  events = source;
  let loaded = false;
  source.addEventListener("open", () => {
    setConnection("live", "Live");
    if (loaded) return;
    loaded = true;
    loadJobs().catch(reportLoadError);
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused outright (a 401, say): ask the API why, which also brings up the token form when that is it.
      setConnection("offline", "Disconnected");
      loadJobs().catch(reportLoadError);
    } else {
      setConnection("connecting", "Reconnecting…");
    }
  });
  for (const name of EVENT_NAMES) {
    source.addEventListener(name, (message) => {
      const event = { number: Number(message.lastEventId), name, data: JSON.parse(message.data) as EventData };
      if (pending) pending.push(event);
      else apply(event);
    });
  }
  // The server could not replay what was missed (it restarted, or too much happened): start from the list again.
  source.addEventListener("resync", () => loadJobs().catch(reportLoadError));
}

function reportLoadError(err: unknown): void {
  if (err instanceof AuthRequired) return;
  setConnection("offline", `Cannot load the downloads: ${err instanceof Error ? err.message : String(err)}`);
}

/** The line where the list would be: why it is empty, or hidden when there is a list. */
function showEmpty(text: string | undefined): void {
  const line = element("empty");
  line.hidden = text === undefined;
  if (text !== undefined) line.textContent = text;
}

function askForToken(): void {
  events?.close();
  setConnection("signin", "Sign in required");
  // What was listed may not be this visitor's to see, and "No downloads yet" would be untrue: say what is needed.
  for (const view of jobs.values()) view.item.remove();
  jobs.clear();
  showEmpty("Sign in with the access token to see the downloads.");
  const form = element<HTMLFormElement>("token-form");
  if (!form.hidden) return;
  form.hidden = false;
  element<HTMLInputElement>("token").focus();
}

async function act(view: JobView, action: "pause" | "resume" | "cancel"): Promise<void> {
  try {
    if (action === "cancel") await api("DELETE", `/i/${view.job.id}`);
    else await api("POST", `/i/${view.job.id}/${action}`);
    // Resuming emits nothing until the transfer starts again: show the job as queued meanwhile.
    if (action === "resume") view.update({ status: "waiting" });
  } catch (err) {
    if (!(err instanceof AuthRequired)) announce(`Could not ${action} ${view.name}: ${(err as Error).message}`);
  }
}

function init(): void {
  const fragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fragment) {
    // A link with #token=… signs in; the fragment never reaches the server, and is removed from the address bar.
    token = fragment;
    sessionStorage.setItem(TOKEN_KEY, fragment);
    history.replaceState(null, "", location.pathname + location.search);
  }

  element<HTMLFormElement>("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget as HTMLFormElement;
    token = element<HTMLInputElement>("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    form.hidden = true;
    connect();
  });

  const addForm = element<HTMLFormElement>("add-form");
  addForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = element("add-error");
    const submit = element<HTMLButtonElement>("add");
    error.textContent = "";
    submit.disabled = true;
    try {
      const source = element<HTMLInputElement>("source").value.trim();
      const dest = element<HTMLInputElement>("dest").value.trim();
      const response = await api("POST", "/i/", {
        source,
        // An empty folder for a model means its own folder under the root, which the server names.
        ...(dest === "" && MODEL_SOURCE.test(source) ? {} : { dest }),
        priority: Number(element<HTMLInputElement>("priority").value),
      });
      const answer = (await response.json()) as WireJob | WireMulti;
      const view = "download_parts" in answer ? showMulti(answer) : show(answer);
      announce(`Added ${view.name}`);
      element<HTMLInputElement>("source").value = "";
      element<HTMLInputElement>("source").focus();
    } catch (err) {
      if (!(err instanceof AuthRequired)) error.textContent = (err as Error).message;
    } finally {
      submit.disabled = false;
    }
  });

  element<HTMLButtonElement>("prune").addEventListener("click", async () => {
    try {
      await api("PATCH", "/");
      // Pruning sends no events: reload the list to drop what the server forgot.
      await loadJobs();
      announce("Finished downloads removed");
    } catch (err) {
      if (!(err instanceof AuthRequired)) announce(`Could not remove finished downloads: ${(err as Error).message}`);
    }
  });

  connect();
}

init();
