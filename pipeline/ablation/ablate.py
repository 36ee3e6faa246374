"""The paper's ablations (section 4.3: Table 4a-e, Fig. 7a-b) with one command each.

    ./run.sh ablate NAME --config C.yaml        (NAME: renderer, size, rpe, transfer, loss_region, expansion,
    python -m pipeline.ablation.ablate NAME --config C.yaml      render_size, seed, or all)

For each variant of the ablation (pipeline.ablation.variants): train it from the same token set, seed and
budget in its own folder, measure its held-out bits per token after every epoch, and (when their weights
are configured) the paper's metrics (pipeline.ablation.runner); then time the variants' sampling in turns
(`pipeline.bench render`) and write, under the ablations folder (`ablate.run_dir`, default
run_dir/ablations):

    NAME/table.md       the Table-4-like Markdown (also printed), ours beside the paper's
    NAME/results.json   every figure of every row, the verdict, the settings
    NAME/curves.png     held-out bits per token against epochs
    NAME/speed.json     the sampling bench's output (re-timed only when a variant's weights change)

A finished variant is never trained again (its done.json); an interrupted one resumes. `seed` is not a
paper ablation: it trains the default again with `ablate.extra_seeds` other seeds, which says how large a
difference between two rows the seed alone can make.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pipeline import atomic
from pipeline.ablation import curves, paper_metrics, report
from pipeline.ablation.runner import Shared, run_logged, run_variant, threads_env, token_set_id
from pipeline.ablation.settings import ablations_dir, read_section, train_data, validation_data
from pipeline.ablation.variants import NAMES, Ablation, Variant, build
from pipeline.config import ConfigError, RunConfig, deep_merge, load_config
from pipeline.errors import entry_point
from pipeline.formats.renderer_io import model_config
from pipeline.formats.shards import TokenSet

log = logging.getLogger("ablate")
ALL = (*NAMES, "seed")


def seed_ablation(seed: int, extra: int) -> Ablation:
    ar = {"renderer": "ar"}
    others = tuple(Variant(f"seed {seed + k}", ar, {"seed": seed + k}) for k in range(1, extra + 1))
    return Ablation("seed", "Seed noise (not in the paper): the default trained with other seeds", (), (
        Variant(f"seed {seed}", ar, default=True), *others), (), "-")


def prepare(cfg: RunConfig) -> tuple[Shared, dict[str, Ablation], dict]:
    sec = read_section(cfg)
    data, validation = train_data(cfg, sec), validation_data(cfg, sec)
    tokens = {"train": token_set_id(data, f"{cfg.path}: the training token set"),
              "validation": token_set_id(validation, f"{cfg.path}: ablate.validation_data")}
    raw_model = cfg.raw.get("model") or {}
    raw_train = cfg.raw.get("train") or {}
    if not isinstance(raw_model, dict) or not isinstance(raw_train, dict):
        raise ConfigError(f"{cfg.path}: sections 'model' and 'train' must be mappings")
    base_model = deep_merge(raw_model, sec.model)
    base_train = deep_merge(raw_train, sec.train)
    for key in ("checkpoint_dir", "tensorboard_dir", "save_every", "keep_last", "export"):
        base_train.pop(key, None)  # each variant's own, under its folder
    base_train["sample_every"] = 0
    base = model_config(RunConfig(cfg.path, {"model": base_model}))
    ablations = build(base, sec.large, sec.expansions, sec.render_sizes)
    seed = cfg.seed if base_train.get("seed") is None else int(base_train["seed"])
    ablations["seed"] = seed_ablation(seed, sec.extra_seeds)
    shared = Shared(cfg=cfg, sec=sec, root=ablations_dir(cfg, sec), data=data, validation=validation,
                    base_model=base_model, base_train=base_train, tokens_id=tokens,
                    metrics=paper_metrics.wanted(cfg), metrics_skipped=paper_metrics.skipped_without_weights(cfg))
    held_out = TokenSet(validation)
    grid = held_out.meta.grid
    settings = {"convergence_tolerance": sec.convergence_tolerance, "budget": sec.train, "model_overrides": sec.model,
                "tokens": tokens, "seed": seed,
                "validation": {"path": str(validation), "items": len(held_out),
                               "direction": sec.validation_direction},
                "speed": {"codes": list(sec.speed.codes or grid[1:]), "batch": sec.speed.batch,
                          "repeats": sec.speed.repeats}}
    return shared, ablations, settings


def measure_speed(shared: Shared, name: str, records: dict[str, dict], settings: dict) -> dict:
    """The bench over the ablation's exports (`records` has the default first), reused while their weights and
    the bench settings are the same."""
    exports = list(dict.fromkeys(r["export"] for r in records.values()))
    shas = list(dict.fromkeys(r["renderer_sha256"] for r in records.values()))
    s = settings["speed"]
    want = {"renderer_sha256": shas, "codes": s["codes"], "batch": s["batch"], "repeats": s["repeats"]}
    path = shared.root / name / "speed.json"
    try:
        old = atomic.read_json(path)
        if {k: old.get("request", {}).get(k) for k in want} == want:
            return old
    except FileNotFoundError:
        pass
    out = shared.root / name / "speed.run.json"
    run_logged([sys.executable, "-m", "pipeline.bench", "render", "--export", *exports,
                "--codes", *map(str, s["codes"]), "--batch", str(s["batch"]), "--repeats", str(s["repeats"]),
                "--out", str(out)], shared.root / name / "speed.log", f"{name}/speed", threads_env(shared.sec))
    result = {**atomic.read_json(out), "request": want}
    atomic.write_json(path, result)
    out.unlink()
    return result


def run_ablation(shared: Shared, ablation: Ablation, settings: dict) -> dict:
    records = {}
    for v in ablation.variants:
        _, record = run_variant(shared, ablation.name, v)
        metrics_file = shared.root / "variants" / record["key"] / "train" / "metrics.jsonl"
        lines = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
        records[v.label] = {**record, "seconds_training": report.training_seconds(lines)}
    default_first = {ablation.default.label: records[ablation.default.label], **records}
    speed = measure_speed(shared, ablation.name, default_first, settings)
    speed_settings = {**settings["speed"], "device": speed.get("device")}
    result = {"ablation": ablation.name, "title": ablation.title, "claim": ablation.claim,
              "paper_columns": list(ablation.paper_columns), "settings": {**settings, "speed": speed_settings}}
    result["rows"] = report.rows(ablation, records, speed, shared.sec.convergence_tolerance)
    result["verdict"] = report.verdict(ablation, result["rows"])
    if not ablation.better_first:  # no order to check (the seed ablation): how far apart the rows are
        result["spread"] = report.spread(result["rows"])
    folder = shared.root / ablation.name
    text = report.markdown(result)
    atomic.write_json(folder / "results.json", result)
    atomic.write_text(folder / "table.md", text)
    curves.draw(result, folder / "curves.png")
    print(text, flush=True)
    return result


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=[*ALL, "all"], help="which ablation")
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    shared, ablations, settings = prepare(cfg)
    names = ALL if args.name == "all" else (args.name,)
    if shared.metrics_skipped:
        log.info("paper's metrics not measured: %s", "; ".join(f"{m}: {w}" for m, w in
                                                             shared.metrics_skipped.items()))
    for name in names:
        run_ablation(shared, ablations[name], settings)
    log.info("tables, JSON and curves under %s", shared.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
