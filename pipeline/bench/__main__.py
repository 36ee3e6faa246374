"""Benchmarks that print JSON: `python -m pipeline.bench NAME [args]`.

Each benchmark is a module `pipeline/bench/NAME.py` with `main(argv) -> dict`; the dict is
printed as one JSON object (and written to --out when given). Figures live here, never in
timed tests. A benchmark that carries on past a failed part lists it under `failed`: the JSON is
still printed, and the exit status is 1.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import pipeline.bench as bench_pkg


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m pipeline.bench NAME [args]   (NAME: {', '.join(available())})")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in available():
        print(f"unknown benchmark {name!r}; available: {', '.join(available())}", file=sys.stderr)
        return 2
    out = None
    if "--out" in rest:
        i = rest.index("--out")
        out = Path(rest[i + 1])
        rest = rest[:i] + rest[i + 2:]
    result = importlib.import_module(f"pipeline.bench.{name}").main(rest)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if out:
        from pipeline import atomic
        atomic.write_text(out, text + "\n")
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
