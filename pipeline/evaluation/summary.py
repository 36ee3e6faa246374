"""Stage 90: a summary of a run — every output file, the headline figures, how to look at them.

Writes run_dir/SUMMARY.md (atomically) and prints it. Reads only what earlier stages wrote;
a stage that did not run (or was skipped for lack of weights) is said so, not hidden.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline import atomic
from pipeline.config import load_config
from pipeline.errors import entry_point

# (folder under run_dir, what it is) in pipeline order
SECTIONS = [
    ("demo_data", "procedural landscape images and videos (stage 00)"),
    ("data/images", "image manifest and rejects (stage 10, captions + split by stage 30)"),
    ("data/single_image", "a single-image run's source: pixels, training and held-out boxes (stage 12)"),
    ("data/videos", "cut clips, object-filter statistics, kept list (stages 15, 20)"),
    ("vqgan", "VQGAN weights and tensorboard (stage 40)"),
    ("tokens", "token shards, or a single image's code canvases (stage 50)"),
    ("train", "renderer checkpoints, export, tensorboard (stage 60)"),
    ("samples", "panorama, extensions, video (stage 70)"),
    ("eval", "metrics (stage 80)"),
    ("protocol", "the paper's Tables 1-3: samples, evaluations, tables (stage 85)"),
]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _files(folder: Path, limit: int) -> tuple[list[Path], int]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return files[:limit], len(files)


def summarize(run_dir: Path, limit: int = 8) -> str:
    lines = [f"# Run summary: {run_dir}", ""]
    for rel, what in SECTIONS:
        folder = run_dir / rel
        lines.append(f"## {rel}/ — {what}")
        if not folder.is_dir():
            lines += ["(not produced: the stage did not run for this config)", ""]
            continue
        shown, total = _files(folder, limit)
        for p in shown:
            lines.append(f"- {p.relative_to(run_dir)} ({_size(p.stat().st_size)})")
        if total > len(shown):
            lines.append(f"- … and {total - len(shown)} more files")
        lines.append("")
    metrics = run_dir / "eval" / "metrics.json"
    if metrics.is_file():
        lines += ["## Metrics", "", "```json", json.dumps(atomic.read_json(metrics), indent=2), "```", ""]
    tables = sorted((run_dir / "protocol").glob("table*/table*.md"))
    if tables:
        lines += ["## The paper's tables (stage 85)", ""]
        for t in tables:  # each begins with its own "## Table N" heading
            lines += ["#" + t.read_text().rstrip().replace("\n## ", "\n### "), ""]
    tb = [p for p in (run_dir / "train" / "tb", run_dir / "vqgan" / "tb") if p.is_dir()]
    if tb:
        lines += ["## Watch training", "", "```", f"tensorboard --logdir {run_dir}", "```", ""]
    return "\n".join(lines)


@entry_point
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    text = summarize(cfg.run_dir)
    atomic.write_text(cfg.run_dir / "SUMMARY.md", text + "\n")
    print(text)
    print(f"\nsummary written to {cfg.run_dir / 'SUMMARY.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
