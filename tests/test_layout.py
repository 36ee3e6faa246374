"""The package tree says the architecture: no import cycles, `model/` free of the pipeline, and stage
families that talk to each other only through `pipeline.formats` and the shared helpers."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = {"pipeline", "pipeline.config", "pipeline.atomic", "pipeline.ranks", "pipeline.errors", "pipeline.lifeline"}
FAMILIES = ("curation", "tokens", "training", "sampling", "evaluation", "demo_data", "ablation")
# The only imports from one stage family into another (documented in pipeline/__init__.py):
# - evaluation measures held-out bits per token with the trainer's own teacher-forced pass;
# - the paper's protocol (evaluation/protocol.py) samples exactly what each table measures through
#   the sampling stage's public entry point (run_jobs and its job config), not a copy of it.
ALLOWED_CROSS = {("evaluation", "pipeline.training.validate"), ("evaluation", "pipeline.sampling.sample")}


def modules() -> dict[str, Path]:
    out = {}
    for top in ("model", "pipeline"):
        for p in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module `name` imports, at any depth of the file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {m: imports_of(m, p, modules()) for m, p in modules().items()}


def family(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 and parts[1] in FAMILIES else None


def test_no_import_cycles():
    # Tarjan's strongly connected components; a package importing its own submodules is no cycle.
    edges = {m: {d for d in ds if not d.startswith(m + ".") and not m.startswith(d + ".")} for m, ds in GRAPH.items()}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, f"modules that import each other (directly or around a loop): {cycles}"


def test_model_imports_nothing_from_pipeline():
    bad = {m: sorted(d for d in ds if d.startswith("pipeline")) for m, ds in GRAPH.items() if m.startswith("model")}
    assert not {m: d for m, d in bad.items() if d}


def test_formats_and_helpers_import_no_stage_family():
    for m, ds in GRAPH.items():
        if m in SHARED or m.startswith("pipeline.formats"):
            stage_deps = sorted(d for d in ds if family(d))
            assert not stage_deps, f"{m} is shared by every stage but imports stage code {stage_deps}"


def test_stage_families_meet_only_through_formats():
    crossings = []
    for m, ds in GRAPH.items():
        fam = family(m)
        if fam is None:
            continue
        for d in ds:
            other = family(d)
            if other and other != fam and (fam, d) not in ALLOWED_CROSS:
                crossings.append(f"{m} -> {d}")
    assert not crossings, "a stage family imports another's code: " + "; ".join(sorted(crossings))


@pytest.mark.parametrize("fam", FAMILIES + ("formats",))
def test_each_sub_package_says_what_it_reads_writes_and_where_it_starts(fam):
    doc = importlib.import_module(f"pipeline.{fam}").__doc__ or ""
    if fam == "formats":
        assert "reader" in doc and "writer" in doc
        return
    for word in ("Reads", "Writes", "Entry point"):
        assert word in doc, f"pipeline/{fam}/__init__.py's docstring does not say '{word}'"
    named = re.findall(r"`(\w+)`", doc.split("Entry point", 1)[1])
    assert named and all((ROOT / "pipeline" / fam / f"{n}.py").is_file() or (ROOT / "pipeline" / fam / n).is_dir()
                         for n in named if n.isidentifier() and not n.startswith("-")), named


def test_every_stage_script_launches_an_existing_entry_point():
    seen = 0
    for script in sorted((ROOT / "stages").glob("[0-9][0-9]_*.sh")):
        for module in re.findall(r"(?:launch|python -m) (pipeline\.[\w.]+)", script.read_text()):
            mod = importlib.import_module(module)
            assert callable(getattr(mod, "main", None)), f"{script.name}: {module} has no main()"
            assert family(module), f"{script.name}: {module} is not inside a stage family"
            seen += 1
    assert seen >= 11
