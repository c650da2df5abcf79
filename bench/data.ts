// Generates the random source files nginx serves, once, and records their sha256 in a manifest
// so reruns neither regenerate nor rehash gigabytes.
import { createHash, randomFillSync } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { mkdir, open, readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";

export interface DataFile {
  /** Path relative to the data root, also the URL path and the expected download name. */
  path: string;
  size: number;
  sha256: string;
}

export interface Sizes {
  big: number;
  medium: number;
  mediumCount: number;
  small: number;
  smallCount: number;
}

const MiB = 1024 * 1024;
export const FULL: Sizes = { big: 2048 * MiB, medium: 256 * MiB, mediumCount: 8, small: 16 * 1024, smallCount: 1000 };
export const QUICK: Sizes = { big: 32 * MiB, medium: 4 * MiB, mediumCount: 8, small: 16 * 1024, smallCount: 50 };

export interface DataSet {
  root: string;
  big: DataFile;
  medium: DataFile[];
  small: DataFile[];
}

function layout(s: Sizes): { path: string; size: number }[] {
  const pad = (i: number, w: number) => String(i).padStart(w, "0");
  return [
    { path: "big.bin", size: s.big },
    ...Array.from({ length: s.mediumCount }, (_, i) => ({ path: `medium/m${i}.bin`, size: s.medium })),
    ...Array.from({ length: s.smallCount }, (_, i) => ({ path: `small/s${pad(i, 4)}.bin`, size: s.small })),
  ];
}

// Hashing while writing means each byte is produced and hashed exactly once.
async function generate(file: string, size: number): Promise<string> {
  await mkdir(dirname(file), { recursive: true });
  const hash = createHash("sha256");
  const chunk = Buffer.allocUnsafe(4 * MiB);
  const fh = await open(file, "w");
  try {
    for (let done = 0; done < size; ) {
      const n = Math.min(chunk.length, size - done);
      const view = chunk.subarray(0, n);
      randomFillSync(view);
      hash.update(view);
      await fh.write(view, 0, n);
      done += n;
    }
  } finally {
    await fh.close();
  }
  return hash.digest("hex");
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * MiB })) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

export async function ensureData(root: string, sizes: Sizes): Promise<DataSet> {
  const [big, ...rest] = await ensureFiles(root, layout(sizes));
  if (!big) throw new Error("empty manifest");
  return {
    root,
    big,
    medium: rest.filter((f) => f.path.startsWith("medium/")),
    small: rest.filter((f) => f.path.startsWith("small/")),
  };
}

/** Random files of the given paths and sizes under `root`, generated once and hashed into a manifest. */
export async function ensureFiles(root: string, wanted: { path: string; size: number }[]): Promise<DataFile[]> {
  const manifestPath = join(root, "manifest.json");
  let files: DataFile[] = [];
  if (existsSync(manifestPath)) files = JSON.parse(await readFile(manifestPath, "utf8")) as DataFile[];
  // The manifest is trusted only if it describes exactly the wanted layout; otherwise start over.
  const valid =
    files.length === wanted.length &&
    wanted.every((w, i) => files[i]?.path === w.path && files[i]?.size === w.size && existsSync(join(root, w.path)));
  if (!valid) {
    const total = wanted.reduce((a, w) => a + w.size, 0);
    console.error(`generating ${wanted.length} files (${(total / 2 ** 30).toFixed(2)} GiB) in ${root} ...`);
    files = [];
    for (const w of wanted) files.push({ ...w, sha256: await generate(join(root, w.path), w.size) });
    await writeFile(manifestPath, JSON.stringify(files, null, 1));
  }
  return files;
}

/**
 * A sparse file of zeros for the memory-at-scale run (20 GiB takes no disk space to serve and no time to create);
 * its sha256 is computed once and kept beside it.
 */
export async function ensureSparse(root: string, name: string, size: number): Promise<DataFile> {
  const file = join(root, name);
  const manifest = `${file}.json`;
  if (existsSync(manifest) && existsSync(file)) {
    const known = JSON.parse(await readFile(manifest, "utf8")) as DataFile;
    if (known.size === size) return known;
  }
  console.log(`creating sparse ${name} (${(size / 2 ** 30).toFixed(0)} GiB of zeros) and hashing it ...`);
  await mkdir(root, { recursive: true });
  const fh = await open(file, "w");
  await fh.truncate(size);
  await fh.close();
  const hash = createHash("sha256");
  const zeros = Buffer.alloc(4 * MiB);
  for (let done = 0; done < size; done += zeros.length)
    hash.update(zeros.subarray(0, Math.min(zeros.length, size - done)));
  const entry: DataFile = { path: name, size, sha256: hash.digest("hex") };
  await writeFile(manifest, JSON.stringify(entry));
  return entry;
}
