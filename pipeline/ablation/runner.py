"""Train and measure one ablation variant through the stages' own entry points (subprocesses, no imports).

A variant's folder, `variants/<key>/` under the ablations folder, is named by a hash of everything that
decides what is trained and measured: the whole model config, the effective train section, the seed, and
the token sets (their paths and the sha256 of their index.parquet). The same switches in two ablations
(the paper's default appears in most) therefore share one folder and are trained once.

    variant.yaml    the run config the stages read (run_dir: this folder)
    plan.json       the trainer's plan (`python -m pipeline.training.train --print-plan`)
    train/          stage 60's outputs: export/, metrics.jsonl, tb/, checkpoints/ (one saved at the end
                    of every epoch; all but the newest are deleted once the curve has measured them)
    curve.json      held-out bits per token after every epoch (`python -m pipeline.training.curve`)
    samples/, eval/ stages 70 and 80, only when the paper's metrics have weights (paper_metrics)
    logs/           each subprocess's output
    done.json       written last: the variant is finished and is never run again

A variant without done.json goes through its steps again, and each step is resumable itself: the trainer
continues from its latest checkpoint, the curve measures only checkpoints it has not measured, and a step
whose output is complete (the export, a full curve) is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from model.config import preset
from pipeline import atomic
from pipeline.ablation import paper_metrics
from pipeline.ablation.settings import AblateSection
from pipeline.ablation.variants import DEFAULT_TRAIN, Variant
from pipeline.config import ConfigError, RunConfig
from pipeline.errors import PipelineError
from pipeline.formats.renderer_io import CONFIG as EXPORT_CONFIG

log = logging.getLogger("ablate")
REPO = Path(__file__).resolve().parents[2]
DONE = "done.json"


class AblationError(PipelineError, RuntimeError):
    """A variant that could not be trained or measured; the message names the log to read."""


@dataclass
class Shared:
    """What every variant of a call shares."""

    cfg: RunConfig
    sec: AblateSection
    root: Path  # the ablations folder
    data: Path
    validation: Path
    base_model: dict  # the model section laid under every variant's switches
    base_train: dict  # the train section with ablate.train laid over it
    tokens_id: dict  # paths and index hashes of the token sets
    metrics: list[str]  # the paper's metrics with weights (empty: skipped for the reasons below)
    metrics_skipped: dict[str, str]


def token_set_id(folder: Path, what: str) -> dict:
    index = folder / "index.parquet"
    if not index.is_file():
        raise ConfigError(f"{what}: {index} not found (tokenise first: stage 50, or ./run.sh demo)")
    return {"path": str(folder), "index_sha256": atomic.sha256_file(index)}


def variant_config(shared: Shared, v: Variant, where: str) -> dict:
    """The variant's run config (without the per-epoch save schedule, which follows from its plan)."""
    model = {**shared.base_model, **v.model}
    name = model.pop("preset", "base")
    try:
        full = preset(str(name), **model)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{shared.cfg.path}: {where}: the variant's model is invalid: {e}") from e
    train = {**shared.base_train, **DEFAULT_TRAIN, **v.train, "data": str(shared.data)}
    out = {"run_dir": ".", "seed": shared.cfg.seed, "model": {"preset": "tiny", **full.to_dict()}, "train": train}
    if shared.metrics:
        out.update(paper_metrics.variant_sections(shared.cfg))
    return out


def variant_key(shared: Shared, config: dict) -> str:
    identity = {"model": config["model"], "train": config["train"], "seed": config["seed"],
                "tokens": shared.tokens_id, "validation": {"direction": shared.sec.validation_direction,
                                                           "batch_size": shared.sec.validation_batch_size},
                "metrics": {k: config.get(k) for k in ("vqgan", "sample", "evaluate")}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def folder_of(shared: Shared, key: str) -> Path:
    return shared.root / "variants" / key


def is_done(folder: Path) -> bool:
    return (folder / DONE).is_file()


def read_done(folder: Path) -> dict:
    return atomic.read_json(folder / DONE)


# ----------------------------------------------------------------------------- subprocesses


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    if shutil.which("nvidia-smi") is None:
        env.setdefault("DS_ACCELERATOR", "cpu")  # as stages/common.sh does
    return env


def threads_env(sec: AblateSection) -> dict:
    return {} if sec.cpu_threads is None else {"OMP_NUM_THREADS": str(sec.cpu_threads)}


def launcher(nproc: int) -> dict:
    """The LAUNCHER stage 60 gets: the caller's, else what the stage script would pick itself for
    train.nproc_per_node (told here, as the plan already read it, to save the script a Python start)."""
    if os.environ.get("LAUNCHER"):
        return {}
    return {"LAUNCHER": f"torchrun --standalone --nproc_per_node {nproc}" if nproc > 1 else sys.executable}


def run_logged(cmd: list[str], log_path: Path, label: str, env: dict | None = None) -> None:
    """Run `cmd` from the repository root; its output goes to `log_path` and, prefixed, to stderr.

    The child runs in its own session. A SIGINT or SIGTERM to us is passed on to its whole process group
    as SIGTERM (the trainer then finishes its batch, saves and exits), we wait for it, and raise
    KeyboardInterrupt: the variant resumes on the next call."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stop: list[int] = []
    with open(log_path, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env={**_env(), **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)

        def forward(signum, frame):
            stop.append(signum)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

        before = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for line in proc.stdout:
                f.write(line)
                sys.stderr.write(f"[{label}] {line}")
            rc = proc.wait()
        finally:
            for s, h in before.items():
                signal.signal(s, h)
    if stop:
        raise KeyboardInterrupt(f"{signal.Signals(stop[0]).name} while running {shlex.join(cmd)}")
    if rc != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise AblationError(f"{label}: `{shlex.join(cmd)}` failed (exit {rc}); its log: {log_path}\n{tail}")


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# ----------------------------------------------------------------------------- one variant


def _write_config(path: Path, config: dict) -> None:
    text = yaml.safe_dump(config, sort_keys=True)
    if not path.is_file() or path.read_text() != text:
        atomic.write_text(path, text)


def _plan(folder: Path, config_path: Path, label: str) -> dict:
    path = folder / "plan.json"
    if not path.is_file():
        log_path = folder / "logs" / "plan.log"
        out = subprocess.run(_python("pipeline.training.train", "--config", str(config_path), "--print-plan"),
                             cwd=REPO, env=_env(), capture_output=True, text=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(out.stdout + out.stderr)
        if out.returncode != 0:
            raise AblationError(f"{label}: the trainer refuses this variant: {out.stderr.strip()}")
        atomic.write_json(path, json.loads(out.stdout.strip().splitlines()[-1]))
    return atomic.read_json(path)


def _export_done(folder: Path) -> bool:
    return (folder / "train" / "export" / EXPORT_CONFIG).is_file()


def _curve_complete(folder: Path, epochs: int) -> bool:
    try:
        points = atomic.read_json(folder / "curve.json")["points"]
    except (FileNotFoundError, KeyError, ValueError):
        return False
    return sorted(p["epoch"] for p in points) == list(range(1, epochs + 1))


def run_variant(shared: Shared, ablation: str, v: Variant) -> tuple[str, dict]:
    """Train and measure `v` unless it is done; returns its key and its done record."""
    where = f"ablation {ablation}, variant {v.label!r}"
    config = variant_config(shared, v, where)
    key = variant_key(shared, config)
    folder = folder_of(shared, key)
    label = f"{ablation}/{v.label}"
    if is_done(folder):
        log.info("%s: done (%s), not run again", label, folder)
        return key, read_done(folder)
    log.info("%s: variant %s in %s", label, key, folder)
    config_path = folder / "variant.yaml"
    _write_config(config_path, config)
    plan = _plan(folder, config_path, label)
    epochs = int(plan["epochs"])
    if plan["batches_per_epoch"] < 1:
        raise AblationError(f"{label}: fewer items than one global batch")
    # A checkpoint at the end of every epoch, all kept until the curve has measured them.
    config["train"]["save_every"] = plan["steps_per_batch"] * plan["batches_per_epoch"]
    config["train"]["keep_last"] = epochs + 1
    _write_config(config_path, config)

    seconds, threads = {}, threads_env(shared.sec)
    if not _export_done(folder):
        t0 = time.monotonic()
        run_logged(["bash", str(REPO / "stages" / "60_train.sh"), "--config", str(config_path)],
                   folder / "logs" / "train.log", label, {**threads, **launcher(plan["nproc_per_node"])})
        seconds["train"] = round(time.monotonic() - t0, 1)
        if not _export_done(folder):
            raise AblationError(f"{label}: training stopped before its end (no export in {folder / 'train'}); "
                                "run the same command again to resume it")
    if not _curve_complete(folder, epochs):
        t0 = time.monotonic()
        run_logged(_python("pipeline.training.curve", "--config", str(config_path), "--data", str(shared.validation),
                           "--out", str(folder / "curve.json"), "--direction", shared.sec.validation_direction,
                           "--batch-size", str(shared.sec.validation_batch_size), "--prune"),
                   folder / "logs" / "curve.log", label, threads)
        seconds["curve"] = round(time.monotonic() - t0, 1)
        if not _curve_complete(folder, epochs):
            raise AblationError(f"{label}: {folder / 'curve.json'} does not cover epochs 1..{epochs}; was a "
                                "checkpoint deleted by hand? Delete the variant folder to train it again")
    metrics, skipped = {}, dict(shared.metrics_skipped)
    if shared.metrics:
        run_logged(["bash", str(REPO / "stages" / "70_sample.sh"), "--config", str(config_path)],
                   folder / "logs" / "sample.log", label, threads)
        run_logged(["bash", str(REPO / "stages" / "80_evaluate.sh"), "--config", str(config_path)],
                   folder / "logs" / "evaluate.log", label, threads)
        result = atomic.read_json(folder / "eval" / "metrics.json")
        metrics = {k: v["value"] for k, v in result["metrics"].items()}
        skipped.update(result["skipped"])
    export = atomic.read_json(folder / "train" / "export" / EXPORT_CONFIG)
    record = {"key": key, "model": config["model"], "train": config["train"], "plan": plan,
              "curve": atomic.read_json(folder / "curve.json")["points"], "export": str(folder / "train" / "export"),
              "renderer_sha256": export["sha256"], "metrics": metrics, "metrics_skipped": skipped,
              "seconds": seconds}
    atomic.write_json(folder / DONE, record)
    log.info("%s: finished", label)
    return key, record

