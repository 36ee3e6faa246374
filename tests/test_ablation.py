"""The ablation harness (pipeline.ablation): variants shared between ablations, the convergence definitions,
and two tiny variants end to end through the real stages (DeepSpeed on one CPU rank), then a second call
that trains nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.ablation import report
from pipeline.ablation.ablate import main, prepare
from pipeline.ablation.runner import variant_config, variant_key
from pipeline.ablation.variants import Ablation, Variant
from pipeline.config import load_config
from tests.test_train_data import make_token_set


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ablation_tokens")
    make_token_set(root / "train", n=8)
    make_token_set(root / "test", n=2, seed=1)
    return root


def write_config(folder: Path, tokens: Path, **ablate) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": ".", "seed": 3, "model": {"preset": "tiny"},
        "train": {"data": str(tokens / "train"), "micro_batch": 4, "global_batch": 4, "epochs": 2, "log_every": 8,
                  "ds_overrides": {"optimizer": {"params": {"torch_adam": True}}}},
        "ablate": {"validation_data": str(tokens / "test"), "speed": {"repeats": 1}, **ablate}}))
    return config


def ablate(config: Path, name: str, capsys, caplog) -> tuple[int, str, str]:
    """The harness in this process (its training, validation and bench run as subprocesses):
    exit status, stdout, and stderr with the log."""
    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="ablate"):
        rc = main([name, "--config", str(config)])
    out = capsys.readouterr()
    return rc, out.out, out.err + "\n".join(r.getMessage() for r in caplog.records)


def test_the_default_is_one_variant_in_every_ablation(tokens, tmp_path):
    shared, ablations, _ = prepare(load_config(write_config(tmp_path, tokens)))
    keys = {}
    for a in ablations.values():
        for v in a.variants:
            keys.setdefault(variant_key(shared, variant_config(shared, v, a.name)), []).append(f"{a.name}/{v.label}")
    defaults = {variant_key(shared, variant_config(shared, a.default, a.name)) for a in ablations.values()}
    assert len(defaults) == 1
    shared_by = keys[defaults.pop()]
    assert len(shared_by) == len(ablations)  # every ablation's default row, and nothing else
    # renderer 2 + size 1 + rpe 1 + transfer 1 + loss region 1 + expansion 3 + render size 2 + seeds 2, + the default
    assert len(keys) == 14
    large = ablations["size"].variants[1]
    assert (large.model["n_layer"], large.model["d_model"], large.model["n_head"]) == (3, 112, 7)


def test_convergence_epochs_and_verdict():
    bits = [6.0, 4.0, 3.5, 3.02, 3.0, 3.01]
    assert report.convergence_epoch(bits, 0.01) == 4  # 3.02 <= 3.0 * 1.01
    assert report.reaches(bits, 3.4, 0.01) == 4
    assert report.reaches(bits, 2.0, 0.01) is None
    a = Ablation("x", "t", (), (Variant("good", default=True), Variant("bad"), Variant("odd", bits_comparable=False)),
                 ("good", "bad", "odd"), "c")
    rows = [{"label": "good", "final_bits": 3.0, "bits_comparable": True},
            {"label": "bad", "final_bits": 2.9, "bits_comparable": True},
            {"label": "odd", "final_bits": 1.0, "bits_comparable": False}]
    v = report.verdict(a, rows)
    assert v["agrees"] is False and v["our_order"] == ["bad", "good"] and v["left_out"] == ["odd"]
    assert v["pairs"] == [{"paper_better": "good", "paper_worse": "bad", "bits_gap": -0.1, "agrees": False}]
    sp = report.spread(rows)  # the comparable rows only
    assert (sp["rows"], sp["min"], sp["max"]) == (2, 2.9, 3.0) and abs(sp["std"] - 0.1 / 2 ** 0.5) < 1e-9


def test_harness_settings_it_owns_are_refused(tokens, tmp_path, capsys, caplog):
    rc, _, err = ablate(write_config(tmp_path, tokens, train={"save_every": 5}), "rpe", capsys, caplog)
    assert rc == 1
    assert "config.yaml: ablate: train.save_every is set by the harness" in err
    assert not (tmp_path / "ablations").exists()


@pytest.mark.slow
def test_two_variants_end_to_end_and_a_second_call_trains_nothing(tokens, tmp_path, capsys, caplog):
    config = write_config(tmp_path, tokens)
    rc, out, err = ablate(config, "rpe", capsys, caplog)
    assert rc == 0, err[-6000:]
    folder = tmp_path / "ablations" / "rpe"
    result = json.loads((folder / "results.json").read_text())
    assert [r["label"] for r in result["rows"]] == ["Pre-RPE", "Post-RPE"]
    assert len({r["key"] for r in result["rows"]}) == 2
    for row in result["rows"]:
        assert row["epochs"] == 2 and len(row["bits_per_token"]) == 2
        assert all(0 < b < 9 for b in row["bits_per_token"])  # 256 codes: 8 bits is a uniform guess
        assert row["patches_per_s"] > 0 and row["parameters"] > 0
        assert row["metrics_skipped"]["block_fid"].startswith("no Inception weights configured")
    assert result["rows"][0]["speed_vs_default"] == 1.0
    assert result["verdict"]["paper_order"] == ["Pre-RPE", "Post-RPE"] and len(result["verdict"]["pairs"]) == 1
    table = (folder / "table.md").read_text()
    assert "| Pre-RPE (default) | 10.05 | 17.78 |" in table and "| Post-RPE | 10.47 | 18.89 |" in table
    assert table in out
    assert Image.open(folder / "curves.png").size == (900, 560)
    # one checkpoint was saved per epoch and measured; only the newest is kept
    variants = tmp_path / "ablations" / "variants"
    for row in result["rows"]:
        run = variants / row["key"]
        curve = json.loads((run / "curve.json").read_text())["points"]
        assert [p["epoch"] for p in curve] == [1, 2]
        assert [p["step"] for p in curve] == [8, 16]  # 2 batches x 4 patches per epoch
        assert sorted(p.name for p in (run / "train" / "checkpoints").glob("global_step*")) == ["global_step16"]

    def state() -> dict:
        return {str(p.relative_to(variants)): p.stat().st_mtime_ns for p in variants.rglob("*")
                if "checkpoints" in p.parts or p.name in ("metrics.jsonl", "curve.json", "done.json")}

    before, table_bytes, png_bytes = state(), (folder / "table.md").read_bytes(), (folder / "curves.png").read_bytes()
    rc, _, err = ablate(config, "rpe", capsys, caplog)
    assert rc == 0, err[-6000:]
    assert state() == before  # no checkpoint written, no training, no validation
    assert err.count("not run again") == 2 and "[rpe/" not in err  # no subprocess at all
    assert (folder / "table.md").read_bytes() == table_bytes
    assert (folder / "curves.png").read_bytes() == png_bytes


def test_every_variant_of_the_shipped_config_is_a_valid_run(tmp_path):
    """configs/ablations.yaml over a token set shaped like the demo's (16 x 16 codes of 64): each variant's
    config is one the trainer accepts, with whole epochs that divide into global batches and patches."""
    from pipeline.formats.renderer_io import model_config
    from pipeline.training.settings import plan_run, read_train_section

    make_token_set(tmp_path / "runs" / "demo" / "tokens" / "images" / "train", n=32, grid=(1, 16, 16), vocab=64)
    make_token_set(tmp_path / "runs" / "demo" / "tokens" / "images" / "test", n=4, grid=(1, 16, 16), vocab=64, seed=1)
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "ablations.yaml").read_text())
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "ablations.yaml"
    config.write_text(yaml.safe_dump(raw))
    shared, ablations, _ = prepare(load_config(config))
    assert shared.root == tmp_path / "runs" / "demo" / "ablations"
    for a in ablations.values():
        for v in a.variants:
            path = tmp_path / "variant.yaml"
            path.write_text(yaml.safe_dump(variant_config(shared, v, a.name)))
            cfg = load_config(path)
            sec, model = read_train_section(cfg), model_config(cfg)
            grid = model.patch
            plan = plan_run(sec, sec.nproc_per_node, 32, (16 // grid[0]) * (16 // grid[1]))
            assert plan.batches_per_epoch == 2 and sec.epochs == raw["ablate"]["train"]["epochs"]
            assert sec.nproc_per_node == 1 and sec.sample_every == 0 and model.vocab_size == 64


def test_paper_metrics_run_only_with_weights_and_from_absolute_paths(tmp_path):
    from pipeline.ablation import paper_metrics
    from pipeline.config import from_dict
    from pipeline.evaluation.evaluate import EvaluateConfig
    from pipeline.sampling.sample import SampleSection, check_jobs

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = load_config(config)
    assert paper_metrics.wanted(cfg) == []
    assert paper_metrics.skipped_without_weights(cfg) == {
        "block_fid": "no Inception weights configured (evaluate.inception_weights)",
        "inception_score": "no Inception weights configured (evaluate.inception_weights)",
        "clip_sim": "no CLIP model configured (evaluate.clip_model)"}

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "inception.pth").write_bytes(b"0")
    vqgan = tmp_path / "runs" / "demo" / "vqgan" / "vqgan.safetensors"  # stage 40's output (the default)
    vqgan.parent.mkdir(parents=True)
    vqgan.write_bytes(b"0")
    raw["evaluate"]["inception_weights"] = "../weights/inception.pth"
    config.write_text(yaml.safe_dump(raw))
    cfg = load_config(config)
    assert paper_metrics.wanted(cfg) == ["block_fid", "inception_score"]
    assert paper_metrics.skipped_without_weights(cfg) == {"clip_sim": "no CLIP model configured (evaluate.clip_model)"}
    sections = paper_metrics.variant_sections(cfg)
    assert sections["vqgan"]["weights"] == str(vqgan)
    ev = sections["evaluate"]
    assert ev["metrics"] == ["block_fid", "inception_score"]
    assert ev["inception_weights"] == str(tmp_path / "weights" / "inception.pth")
    assert ev["reference"] == str(tmp_path / "runs" / "demo" / "data" / "images" / "manifest.parquet")
    jobs = sections["sample"]["jobs"]
    assert [j["name"] for j in jobs] == [j["name"] for j in raw["sample"]["jobs"] if j["mode"] != "image_to_video"]
    assert all(Path(j["input"]).is_absolute() for j in jobs if "input" in j)
    check_jobs(from_dict(SampleSection, sections["sample"]), "variant")
    from_dict(EvaluateConfig, ev)


def test_curve_takes_only_checkpoints_saved_at_the_end_of_an_epoch(tmp_path):
    from pipeline import atomic
    from pipeline.training.checkpoint import META_NAME, CheckpointStore
    from pipeline.training.curve import epoch_end_tags

    for step, epoch, batch in ((8, 1, 0), (12, 1, 1), (16, 2, 0), (20, 2, 1)):  # 12 and 20: stopped mid-epoch
        atomic.write_json(tmp_path / f"global_step{step}" / META_NAME, {"position": {"epoch": epoch, "batch": batch}})
    (tmp_path / "global_step24").mkdir()  # an incomplete save: no meta
    assert epoch_end_tags(CheckpointStore(tmp_path)) == [("global_step8", 1), ("global_step16", 2)]
