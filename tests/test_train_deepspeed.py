"""Render-and-optimize on real DeepSpeed (CPU, gloo): ranks, nodes, steps, exact resume, export, bad input.

Every run is a real launcher process (python -m pipeline.training.train, torchrun with 2 ranks, two torchrun
"nodes"), the tiny preset on 8x8 code grids (2x2 patches), 16 items, global batch 4: 4 batches per
epoch, 4 optimizer steps per batch, 32 steps in 2 epochs. One uninterrupted single-rank ZeRO-2 fp32
run is the reference the other runs are compared with.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from model.directions import Direction, Grid
from model.patches import get_patch
from model.pool import ContextPool
from pipeline.formats.renderer_io import RendererLoadError, load_renderer
from pipeline.formats.shards import TokenSet, shard_name
from pipeline.training.validate import validation_bits_per_token
from tests.test_train_data import make_token_set

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS = 32  # 2 epochs x 4 batches x 4 patches

PROBE = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[3])
from pipeline.config import load_config
from pipeline.training.settings import read_train_section
from pipeline.training.train import ensure_launcher_env, run_training
from tests.test_train_deepspeed import probe_logits
ensure_launcher_env()
cfg = load_config(sys.argv[1])
trainer = run_training(cfg, read_train_section(cfg))
torch.save(probe_logits(trainer.engine.module.eval()), sys.argv[2])
dist.destroy_process_group()
"""


def probe_logits(model) -> torch.Tensor:
    """Logits of every patch of a fixed 2x2-patch batch, teacher-forced through a context pool."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    grid, d = Grid(2, 2), Direction.parse("down-right-forward")
    codes = torch.randint(0, cfg.vocab_size, (2, 1, 8, 8), generator=g)
    ids = torch.randint(1, 40, (2, cfg.text_len), generator=g)
    pool, outs = ContextPool(grid, d, cfg.expand), []
    with torch.no_grad():
        for c in d.schedule(grid):
            out = model(get_patch(codes, c, cfg.patch), pool.context(c), ids, ids > 0)
            outs.append(out.logits)
            pool.add(c, out.states)
            pool.remove(c)
    return torch.stack(outs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
            "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), "PYTHONUNBUFFERED": "1"}


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A process in its own session (so a timeout can stop it and every rank it launched)."""
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"hung for more than {timeout} s:\n{log.read_text()[-4000:]}")
    return rc, log.read_text()


def train_cmd(config: Path, ranks: int = 1, extra: tuple = ()) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "pipeline.training.train", "--config", str(config), *extra]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
            str(free_port()), "-m", "pipeline.training.train", "--config", str(config), *extra]


def train(config: Path, ranks: int = 1, extra: tuple = (), timeout: float = 240, ok: bool = True,
          status: int = 0) -> str:
    """Run the trainer; with `ok`, check that it exits with `status` (75: stopped, resumable; under torchrun a
    rank exits 0 after a clean stop, and the stage script reports 75: tests/test_train_faults.py)."""
    log = config.parent / f"log-{time.monotonic_ns()}.txt"
    rc, out = finish(start(train_cmd(config, ranks, extra), log), log, timeout)
    if ok:
        assert rc == (status if ranks == 1 else 0), out[-6000:]
    elif rc == 0:
        pytest.fail(f"expected a failure:\n{out[-6000:]}")
    return out


def write_config(run_dir: Path, data: Path, model: dict | None = None, sections: dict | None = None,
                 **train_overrides) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = train_overrides.pop("ds_overrides", {})
    section = {"data": str(data), "micro_batch": 4, "global_batch": 4, "epochs": 2, "save_every": 8,
               "log_every": 16, "ds_overrides": {"optimizer": {"params": {"torch_adam": True}}, **overrides}}
    section.update(train_overrides)
    config = run_dir / "config.yaml"
    config.write_text(yaml.safe_dump({"run_dir": ".", "seed": 3, "model": {"preset": "tiny", **(model or {})},
                                      "train": section, **(sections or {})}))
    return config


def losses(run_dir: Path) -> tuple[list[float], list[int]]:
    records = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    return [x for r in records for x in r["patch_losses"]], [r["step"] for r in records]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "train" / "export" / "renderer.safetensors"))


def latest(run_dir: Path) -> str | None:
    p = run_dir / "train" / "checkpoints" / "latest"
    return p.read_text().strip() if p.is_file() else None


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_token_set(tmp_path_factory.mktemp("data") / "train", n=16)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """One rank, ZeRO-2, fp32, uninterrupted; also saves the live model's logits on a probe batch."""
    run = tmp_path_factory.mktemp("reference")
    config = write_config(run, data)
    log = run / "log.txt"
    proc = start([sys.executable, "-c", PROBE, str(config), str(run / "probe.pt"), str(REPO)], log)
    rc, out = finish(proc, log, 240)
    assert rc == 0, out[-6000:]
    return run


def tensorboard(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "train" / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_reference_run_steps_once_per_patch(reference):
    loss, steps = losses(reference)
    assert len(loss) == STEPS and all(np.isfinite(loss))
    assert steps == list(range(4, STEPS + 1, 4))  # engine.global_steps advances 4 (patches) per batch
    assert latest(reference) == f"global_step{STEPS}"
    assert np.mean(loss[-8:]) < np.mean(loss[:8])  # it learns something
    assert (reference / "train" / "text_tokenizer.json").is_file()
    tb = tensorboard(reference)
    tags = set(tb.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/samples_per_s", "perf/mfu",
            "perf/peak_memory_gib", "loss_by_patch/000", "loss_by_patch/003"} <= tags
    assert [e.step for e in tb.Scalars("train/loss")] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([e.value for e in tb.Scalars("train/loss")], loss, rtol=1e-6)
    lrs = [e.value for e in tb.Scalars("train/lr")]
    assert lrs[0] == pytest.approx(0.5e-4) and lrs[-1] == pytest.approx(1e-4)  # warm-up: 5% of 32 steps = 2


def test_loss_region_full_steps_once_per_batch_and_samples_images(data, tmp_path):
    from model.vqgan import VQGAN, preset
    from pipeline.formats.vqgan_io import save_vqgan

    run = tmp_path / "full"
    torch.manual_seed(0)
    save_vqgan(VQGAN(preset("tiny_f8")), run / "vqgan" / "vqgan.safetensors")  # f8, 256 codes
    train(write_config(run, data, loss_region="full", epochs=1, sample_every=2,
                       sections={"vqgan": {"preset": "tiny_f8"}}))
    loss, steps = losses(run)
    assert steps == [1, 2, 3, 4] and len(loss) == 16
    assert latest(run) == "global_step4"
    tb = tensorboard(run)
    images = [e for tag in tb.Tags()["images"] for e in tb.Images(tag)]
    assert [e.step for e in images] == [2, 4]
    assert (images[0].width, images[0].height) == (128, 64)  # truth | prediction, 8x8 codes at f8


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_ranks_match_one_rank(reference, data, tmp_path, stage):
    over = {"zero_optimization": {"stage3_param_persistence_threshold": 0}} if stage == "zero3" else {}
    run = tmp_path / stage
    out = train(write_config(run, data, micro_batch=2, ds_config=stage, ds_overrides=over), ranks=2)
    assert "world size 2 (gloo), ZeRO stage " + stage[-1] in out
    a, b = losses(reference), losses(run)
    assert b[1] == a[1]
    np.testing.assert_allclose(b[0], a[0], rtol=0, atol=1e-5)
    wa, wb = weights(reference), weights(run)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-5)


def test_two_nodes_match_one_node(reference, data, tmp_path):
    run = tmp_path / "nodes"
    config = write_config(run, data, micro_batch=2)
    port = free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
               "--rdzv_id", "nodes-test", "-m", "pipeline.training.train", "--config", str(config)]
        procs.append((start(cmd, run / f"node{node}.txt"), run / f"node{node}.txt"))
    outs = [finish(p, log, 300) for p, log in procs]
    assert all(rc == 0 for rc, _ in outs), "\n".join(o[-3000:] for _, o in outs)
    assert any("world size 2" in o for _, o in outs)
    np.testing.assert_allclose(losses(run)[0], losses(reference)[0], rtol=0, atol=1e-5)


def test_stop_resume_and_sigkill_resume_are_bit_identical(reference, data, tmp_path):
    run = tmp_path / "resumed"
    config = write_config(run, data, save_every=4)
    out = train(config, extra=("--stop-after-steps", "8"), status=75)
    assert "stopped, resumable: --stop-after-steps 8 at optimizer step 8" in out and latest(run) == "global_step8"
    assert not (run / "train" / "export").exists()
    # Resume, and kill -9 the process as soon as it has written a newer checkpoint.
    log = run / "killed.txt"
    proc = start(train_cmd(config), log)
    deadline = time.monotonic() + 240
    while latest(run) == "global_step8" and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed:\n" + log.read_text()[-3000:]
    killed_at = latest(run)
    assert killed_at not in ("global_step8", f"global_step{STEPS}"), killed_at
    assert "starting from checkpoint global_step8 (optimizer step 8, epoch 0 batch 2" in log.read_text()
    out = train(config)
    assert f"starting from checkpoint {killed_at}" in out
    a, b = losses(reference), losses(run)
    assert b == a  # every loss bit-identical (records past the last checkpoint were replaced)
    wa, wb = weights(reference), weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("stage, before, after", [("zero2", 2, 1), ("zero2", 1, 2), ("zero3", 2, 1), ("zero3", 1, 2)])
def test_resume_on_another_number_of_ranks(reference, data, tmp_path, stage, before, after):
    """Saved by `before` ranks mid-epoch, resumed by `after` through DeepSpeed's universal checkpoint: the same
    losses as the uninterrupted reference (so weights, Adam's moments and the schedule carried over), and each
    item of the epoch trained exactly once, in the order the reference took."""
    from pipeline.training.data import DataPosition, GlobalBatchSampler

    over = {"zero_optimization": {"stage3_param_persistence_threshold": 0}} if stage == "zero3" else {}
    run = tmp_path / "run"
    config = write_config(run, data, micro_batch=2, save_every=4, ds_config=stage, ds_overrides=over,
                          record_items=True)
    train(config, ranks=before, extra=("--stop-after-steps", "8"), status=75)  # epoch 0, 2 of its 4 batches
    out = train(config, ranks=after, extra=("--stop-after-steps", "16"), status=75)
    assert (f"starting from checkpoint global_step8 (optimizer step 8, epoch 0 batch 2, 2 batches done), saved by "
            f"{before} rank(s) and resumed on {after} through its universal checkpoint") in out
    records = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12, 16]
    np.testing.assert_allclose([x for r in records for x in r["patch_losses"]], losses(reference)[0][:16],
                               rtol=0, atol=1e-5)
    assert [len(r["items_by_rank"]) for r in records] == [before, before, after, after]
    trained = [[i for per_rank in r["items_by_rank"] for i in per_rank] for r in records]
    ids = TokenSet(data).ids
    order = GlobalBatchSampler(16, 4, 4, 1, 0, 1, seed=3)  # the epoch's order: it depends on no rank count
    assert trained == [[ids[i] for i in order.global_items(DataPosition(0, b))] for b in range(4)]
    assert sorted(i for batch in trained for i in batch) == sorted(ids)  # the epoch: each item exactly once
    # the converted copy served its purpose: pruning removed it once this run saved its own checkpoint
    assert not (run / "train" / "checkpoints" / "universal").exists()
    assert latest(run) == "global_step16"


def test_export_reproduces_the_trained_logits(reference):
    model, tok = load_renderer(reference / "train" / "export")
    assert type(model).__name__ == "Renderer" and tok is not None and tok.kind == "bpe"
    live = torch.load(reference / "probe.pt", weights_only=True)
    torch.testing.assert_close(probe_logits(model), live, rtol=0, atol=1e-5)
    meta = json.loads((reference / "train" / "export" / "renderer.json").read_text())
    assert meta["global_steps"] == STEPS and meta["config"]["d_model"] == 64


def test_export_load_errors(reference, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(reference / "train" / "export", broken)
    weights_file = broken / "renderer.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    with pytest.raises(RendererLoadError, match="renderer.safetensors: not a readable safetensors file"):
        load_renderer(broken)
    (broken / "renderer.json").unlink()
    with pytest.raises(RendererLoadError, match="renderer.json: missing"):
        load_renderer(broken)


def test_validation_bits_per_token(reference, data):
    from model.renderer import Renderer

    trained, tok = load_renderer(reference / "train" / "export")
    ts = TokenSet(data)
    result = validation_bits_per_token(trained, ts, "right-down-forward", 5, tok)
    assert result["items"] == 16 and result["tokens"] == 16 * 64
    assert result["bits_per_token"] == pytest.approx(result["loss_nats"] / np.log(2))
    assert len(result["bits_per_token_by_patch"]) == 4
    torch.manual_seed(3)
    untrained = Renderer(trained.cfg).eval()
    baseline = validation_bits_per_token(untrained, ts, "right-down-forward", 5, tok)
    assert abs(baseline["bits_per_token"] - 8.0) < 0.5  # about log2(256) before training
    assert result["bits_per_token"] < baseline["bits_per_token"]
    again = validation_bits_per_token(trained, ts, "right-down-forward", 16, tok)
    assert again["bits_per_token"] == pytest.approx(result["bits_per_token"], abs=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(reference, data, tmp_path):
    run = tmp_path / "nan"
    shutil.copytree(reference / "train" / "checkpoints", run / "train" / "checkpoints")
    shutil.copy(reference / "train" / "text_tokenizer.json", run / "train" / "text_tokenizer.json")
    before = sorted(p.name for p in (run / "train" / "checkpoints").iterdir())
    # the same run, extended by an epoch at an absurd learning rate (optimisation settings may change on resume)
    out = train(write_config(run, data, epochs=3, lr=1.0e30), ok=False)
    assert "optimisation settings differ from the checkpoint's; from now on: lr 0.0001 -> 1e+30" in out
    assert "pipeline.training.train: error: non-finite loss nan at patch index" in out
    assert "stopping without saving" in out
    assert latest(run) == f"global_step{STEPS}"
    assert sorted(p.name for p in (run / "train" / "checkpoints").iterdir()) == before


def test_config_contradicting_the_checkpoint(reference, data, tmp_path):
    run = tmp_path / "contra"
    shutil.copytree(reference / "train" / "checkpoints", run / "train" / "checkpoints")
    t0 = time.monotonic()
    out = train(write_config(run, data, model={"d_model": 32, "n_head": 4}, global_batch=8, micro_batch=8), ok=False)
    assert "the run's config contradicts the checkpoint it would resume from" in out
    assert "model.d_model: checkpoint has 64, this run has 32" in out
    assert "train.global_batch: checkpoint has 4, this run has 8" in out
    assert time.monotonic() - t0 < 120


def corrupt(folder: Path, how: str) -> None:
    npy = folder / f"{shard_name(0, 1)}.npy"
    if how == "missing shard":
        npy.unlink()
    elif how == "truncated shard":
        npy.write_bytes(npy.read_bytes()[:-64])
    elif how == "codebook":
        meta = json.loads((folder / "meta.json").read_text())
        meta["vocab_size"] = 4096
        (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how, message", [
    ("missing shard", "shard-R000-00001.npy: listed in index.parquet but missing"),
    ("truncated shard", "shard-R000-00001.npy: truncated"),
    ("codebook", "token ids outside the codebook: the token set was made with 4096 codes"),
    ("grid", "code grid f x h x w = 1 x 8 x 6 does not divide into patches"),
])
def test_bad_input_fails_with_its_cause(tmp_path, how, message):
    folder = make_token_set(tmp_path / "data", n=8, grid=(1, 8, 6) if how == "grid" else (1, 8, 8))
    corrupt(folder, how)
    out = train(write_config(tmp_path / "run", folder), ok=False, timeout=120)
    assert "pipeline.training.train: error: " in out and message in out and "Traceback" not in out, out[-3000:]


def test_bad_token_on_one_rank_stops_both_ranks(tmp_path):
    folder = make_token_set(tmp_path / "data", n=8)
    arr = np.load(folder / f"{shard_name(0, 1)}.npy", mmap_mode="r+")
    arr[2, 0, 0, 0] = 999
    arr.flush()
    del arr
    t0 = time.monotonic()
    out = train(write_config(tmp_path / "run", folder, micro_batch=2), ranks=2, ok=False, timeout=180)
    assert "token ids outside the codebook [0, 256)" in out and "s1_2" in out
    assert "failed on rank" in out  # the other rank stopped too, with the first rank's reason
    assert time.monotonic() - t0 < 180
