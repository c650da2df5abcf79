// Horizontal bar chart of median wall time, one panel per workload, each on its own scale
// (the workloads differ by orders of magnitude). Drawn as SVG, rasterised by rsvg-convert.
import { execFileSync } from "node:child_process";

export interface Bar {
  label: string;
  seconds?: number;
  /** seconds ÷ dlqueue (library)'s seconds in the same workload. */
  ratio?: number;
  reference?: boolean;
  failed?: boolean;
}

const W = 1000;
const LABEL_W = 330;
const BAR_W = 480;
const ROW = 24;
const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

export function chartSvg(panels: { title: string; bars: Bar[] }[]): string {
  const parts: string[] = [];
  let y = 84;
  for (const p of panels) {
    parts.push(`<text x="12" y="${y}" font-weight="bold" font-size="15">${esc(p.title)}</text>`);
    y += 10;
    const max = Math.max(...p.bars.map((b) => b.seconds ?? 0)) || 1;
    for (const b of p.bars) {
      const mid = y + ROW / 2 + 5;
      parts.push(`<text x="${LABEL_W - 8}" y="${mid}" text-anchor="end">${esc(b.label)}</text>`);
      if (b.failed || b.seconds === undefined) {
        parts.push(
          `<text x="${LABEL_W + 4}" y="${mid}" fill="#c62828" font-weight="bold">FAILED (see results.md)</text>`,
        );
      } else {
        const w = Math.max(1, (b.seconds / max) * BAR_W);
        const fill = b.label.startsWith("dlqueue")
          ? "#1e63c4"
          : b.label.startsWith("page-cache")
            ? "#b9bec7"
            : "#7d8693";
        const ratio = b.ratio === undefined ? "" : b.reference ? "  (= 1.00)" : `  (${b.ratio.toFixed(2)}×)`;
        parts.push(`<rect x="${LABEL_W}" y="${y + 3}" width="${w.toFixed(1)}" height="${ROW - 6}" fill="${fill}"/>`);
        parts.push(`<text x="${LABEL_W + w + 6}" y="${mid}">${b.seconds.toFixed(2)} s${ratio}</text>`);
      }
      y += ROW;
    }
    y += 30;
  }
  const h = y;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${h}" font-family="DejaVu Sans, sans-serif" font-size="13">
<rect width="${W}" height="${h}" fill="white"/>
<text x="12" y="26" font-size="18" font-weight="bold">dlqueue benchmark: median wall time, shorter is better</text>
<text x="12" y="44" fill="#555">(×) = relative to dlqueue (library) in the same workload; each panel has its own scale</text>
${parts.join("\n")}
</svg>
`;
}

export function writeChart(panels: { title: string; bars: Bar[] }[], png: string): void {
  execFileSync("rsvg-convert", ["-o", png], { input: chartSvg(panels) });
}
