// The other maintained Node lines, for rows that run the same client on each: most users run one of them, not the
// Node 20 the project builds with. npm's node-linux-<arch> packages carry the official binaries (as in .ci/run).
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";

export const OTHER_NODE_MAJORS = [22, 24] as const;
export type NodeMajor = (typeof OTHER_NODE_MAJORS)[number];

export interface OtherNode {
  major: NodeMajor;
  bin: string;
  version: string;
}

/** Installs each line under `dir`/<major>/ unless it is already there; a line that fails to install is skipped. */
export function ensureOtherNodes(dir: string): { nodes: OtherNode[]; problems: string[] } {
  const nodes: OtherNode[] = [];
  const problems: string[] = [];
  for (const major of OTHER_NODE_MAJORS) {
    const prefix = `${dir}/${major}`;
    const pkg = `node-linux-${process.arch}`;
    const bin = `${prefix}/node_modules/${pkg}/bin/node`;
    try {
      if (!existsSync(bin)) {
        console.log(`installing ${pkg}@${major} into ${prefix} ...`);
        execFileSync(
          "npm",
          [
            "install",
            "--prefix",
            prefix,
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            `${pkg}@${major}`,
          ],
          { stdio: ["ignore", "inherit", "inherit"] },
        );
      }
      nodes.push({ major, bin, version: execFileSync(bin, ["--version"], { encoding: "utf8" }).trim() });
    } catch (error) {
      problems.push(`Node ${major}: ${pkg}@${major} could not be installed or run (${(error as Error).message})`);
    }
  }
  return { nodes, problems };
}
