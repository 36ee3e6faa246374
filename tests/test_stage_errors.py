"""Every stage family fails the same way (pipeline.errors): a bad config, a read-only output folder or a full
disk give one line naming the file or folder and the cause, exit status 1, no traceback, and nothing
half-written. The stage scripts run as a user would run them; read-only folders and full disks are real
(a bind mount and a small tmpfs in a private mount namespace, tests/faults.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from model.vqgan import VQGAN, preset
from pipeline.formats import vqgan_io
from tests.faults import error_lines, files_under, needs_mounts, run_stage, stage
from tests.test_tokenize import setup_run
from tests.test_train_data import make_token_set
from tests.test_vqgan_train import make_images

pytestmark = pytest.mark.slow


def one_error(done, *expected: str) -> str:
    """The stage failed with exit status 1 and exactly one error line holding every `expected` text."""
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-4000:]
    lines = error_lines(out)
    assert len(lines) == 1, out[-4000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def config(path: Path, **sections) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"run_dir": "run", **sections}))
    return path


# ----------------------------------------------------------------------------- bad configs, one per family


@pytest.mark.parametrize("number, text, message", [
    ("00", "run_dir: run\ndemo_data: {images: many}\n", "demo_data.images: expected an integer, got 'many'"),
    ("10", "run_dir: run\ningest_images: {sources: [{kind: folder, path: src}], min_side: big}\n",
     "ingest_images.min_side: expected an integer, got 'big'"),
    ("40", "run_dir: run\ntrain_vqgan: {steps: many}\n", "train_vqgan.steps: expected an integer, got 'many'"),
    ("50", "run_dir: run\ntokenize: 16\n", "section 'tokenize' must be a mapping, got int"),
    ("50", "run_dir: run\ntokenize: {batchsize: 2}\n", "tokenize: unknown key(s) ['batchsize']"),
    ("60", "run_dir: run\ntrian: {lr: 1e-3}\n", "unknown section(s) ['trian']"),
    ("70", "run_dir: run\nsample: {jobs: [{name: a, mode: paint}]}\n", "sample.jobs.mode: must be one of"),
    ("80", "run_dir: run\nevaluate: {metricz: [block_fid]}\n", "evaluate: unknown key(s) ['metricz']"),
])
def test_a_bad_config_is_one_line_naming_the_file_and_key(tmp_path, number, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    one_error(run_stage(stage(number, cfg)), f"{cfg}: ", message)
    assert not (tmp_path / "run").exists()


def test_a_missing_vqgan_weights_file_is_named(tmp_path):
    rows = make_images(tmp_path / "src", 2, 64)
    cfg = setup_run(tmp_path, rows, tmp_path / "nowhere" / "vqgan.safetensors")
    one_error(run_stage(stage("50", cfg)), "pipeline.tokens.tokenize: error: ", str(tmp_path / "nowhere"))
    assert not (tmp_path / "run" / "tokens").exists()


# ----------------------------------------------------------------------------- read-only output folders


def source_images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64 + 8 * i, 64), (40 * i, 90, 200)).save(folder / f"{i}.png")
    return folder


@needs_mounts
def test_read_only_output_demo_data_and_curation(tmp_path):
    run = tmp_path / "run"
    cfg = config(tmp_path / "a.yaml", demo_data={"images": 2, "videos": 0, "image_size": 64})
    one_error(run_stage(stage("00", cfg), read_only=(run,)), "pipeline.demo_data.make: error: cannot write ",
              str(run), "read-only file system")
    assert files_under(run) == []
    cfg = config(tmp_path / "b.yaml", ingest_images={"sources": [{"kind": "folder", "path": str(
        source_images(tmp_path / "src"))}], "min_side": 48, "size": 48, "workers": 0})
    one_error(run_stage(stage("10", cfg), read_only=(run,)), "pipeline.curation.ingest_images: error: cannot write ",
              str(run / "data"), "read-only file system")
    assert files_under(run) == []


@pytest.fixture(scope="module")
def vqgan_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vqgan") / "vqgan.safetensors"
    vqgan_io.save_vqgan(VQGAN(preset("tiny_f16")), path)
    return path


@needs_mounts
def test_read_only_output_tokens(tmp_path, vqgan_weights):
    cfg = setup_run(tmp_path, make_images(tmp_path / "src", 3, 64), vqgan_weights)
    out = tmp_path / "run" / "tokens"
    one_error(run_stage(stage("50", cfg), read_only=(out,)), "pipeline.tokens.tokenize: error: cannot write ",
              str(out / "images"), "read-only file system")
    assert files_under(out) == []


@needs_mounts
def test_read_only_output_training_sampling_and_evaluation(tmp_path):
    data = make_token_set(tmp_path / "data", n=8)
    run = tmp_path / "run"
    cfg = config(tmp_path / "t.yaml", model={"preset": "tiny"}, train={
        "data": str(data), "micro_batch": 4, "global_batch": 4, "epochs": 1,
        "ds_overrides": {"optimizer": {"params": {"torch_adam": True}}}})
    one_error(run_stage(stage("60", cfg), read_only=(run,)), "pipeline.training.train: error: cannot write ",
              str(run / "train"), "read-only file system")
    cfg = config(tmp_path / "s.yaml", sample={"jobs": [{"name": "a", "mode": "unconditional", "size": [16, 16]}]})
    one_error(run_stage(stage("70", cfg), read_only=(run,)), "pipeline.sampling.sample: error: cannot write ",
              str(run / "samples"), "read-only file system")
    cfg = config(tmp_path / "e.yaml")
    one_error(run_stage(stage("90", cfg), read_only=(run,)), "pipeline.evaluation.summary: error: cannot write ",
              str(run / "SUMMARY.md"), "read-only file system")
    assert files_under(run) == []


# ----------------------------------------------------------------------------- full disks


@needs_mounts
def test_a_full_disk_during_image_ingest(tmp_path):
    src = source_images(tmp_path / "src", 3)
    out = tmp_path / "run" / "data"
    cfg = config(tmp_path / "i.yaml", ingest_images={"sources": [{"kind": "folder", "path": str(src)}],
                                                     "min_side": 48, "size": 48, "workers": 0})
    done = run_stage(stage("10", cfg), full=(out,), full_kib=4, keep=tmp_path / "left")
    line = one_error(done, "pipeline.curation.ingest_images: error: no space left on device: ", str(out))
    assert "free there" in line
    left = files_under(tmp_path / "left" / "0")
    assert not [f for f in left if f.endswith(".tmp")], left  # no temporary survives
    assert "images/manifest.parquet" not in left  # the stage did not finish, so nothing says it did


@needs_mounts
@pytest.mark.parametrize("ranks", [1, 2])
def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, ranks):
    data = make_token_set(tmp_path / "data", n=8)
    ck = tmp_path / "run" / "train" / "checkpoints"
    cfg = config(tmp_path / "t.yaml", model={"preset": "tiny"}, train={
        "data": str(data), "micro_batch": 4 // ranks, "global_batch": 4, "epochs": 1, "save_every": 4,
        "nproc_per_node": ranks, "ds_overrides": {"optimizer": {"params": {"torch_adam": True}}}})
    # 6 MiB: the save at step 4 (258k parameters: weights + fp32 master + Adam's two moments, ~4.1 MB)
    # completes, the one at step 8 cannot
    done = run_stage(stage("60", cfg), full=(ck,), full_kib=6 * 1024, keep=tmp_path / "left")
    expected = ("pipeline.training.train: error: no space left on device: ", str(ck / "global_step8"),
                "checkpoint global_step8 is incomplete and was removed, the last complete one is global_step4")
    if ranks == 1:
        one_error(done, *expected)
    else:  # a rank that hit the full disk says so, one that got there second that its peer ended (which one
        # is first varies; torchrun may also end the second before it speaks); torchrun adds its own report
        out = done.stdout + done.stderr
        assert done.returncode == 1, out[-4000:]
        lines = [line for line in out.splitlines() if "pipeline.training.train: error: " in line]
        assert "[rank1]: Traceback" not in out and "[rank0]: Traceback" not in out, out[-6000:]
        assert 1 <= len(lines) <= 2, (lines, out[-6000:])
        full = [line for line in lines if all(t in line for t in expected)]
        assert full and all(line in full or "another rank ended" in line for line in lines), lines
    left = tmp_path / "left" / "0"
    assert (left / "latest").read_text() == "global_step4"
    assert sorted(p.name for p in left.iterdir() if p.is_dir()) == ["global_step4"]
    assert json.loads((left / "global_step4" / "train_meta.json").read_text())["global_steps"] == 4
