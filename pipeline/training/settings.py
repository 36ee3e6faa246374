"""The `train` section of a run config and everything derived from it without a process group.

Read by the trainer (pipeline.training.train), the export CLI and the benches: the section's
dataclass with its checks, where its folders are, the DeepSpeed JSON the engine gets (the trainer
owns batch sizes, accumulation, lr / Adam settings, clipping and precision; a JSON file that sets
one of them to another value is an error), the LR schedule, and the run's plan in optimizer steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model.directions import PAPER_DIRECTIONS, Direction
from pipeline.config import ConfigError, RunConfig, deep_merge

REPO_DS_CONFIGS = Path(__file__).resolve().parents[2] / "ds_configs"
# Keys of the DeepSpeed config that the train section decides.
OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
              "gradient_clipping")


@dataclass
class WindowSettings:
    """`train.windows`: train on windows of code canvases (single-image runs, pipeline.formats.canvas).

    Every epoch draws `per_epoch` windows of `size` patches at random places inside the canvases'
    training boxes (pipeline.training.data.TrainWindows); all windows have one size, so every batch
    has one patch grid and the ranks stay in lock-step. `size: null` makes each window the whole
    training box: the image's whole patch chain as one instance.
    """

    size: tuple[int, int] | None = None  # [H, W] in patches; None = the whole training box
    per_epoch: int = 256  # windows per epoch
    align: Literal["code", "patch"] = "code"  # window corners on any code, or only on the patch grid

    def __post_init__(self):
        if self.size is not None and min(self.size) < 1:
            raise ValueError(f"windows.size must be at least [1, 1] patches, got {list(self.size)}")
        if self.per_epoch < 1:
            raise ValueError("windows.per_epoch must be >= 1")


@dataclass
class TrainSection:
    data: str | None = None  # token set folder (default run_dir/tokens/images/train); with `windows`, a canvas
    # set (default run_dir/tokens/single_image)
    windows: WindowSettings | None = None
    ds_config: str = "zero2"
    ds_overrides: dict[str, Any] = field(default_factory=dict)
    micro_batch: int = 8
    global_batch: int = 256
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    lr_decay: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.0
    epochs: int = 50
    max_steps: int | None = None  # optimizer steps; the run ends at the first batch boundary reaching it
    grad_clip: float = 1.0  # 0 = off
    bf16: bool | None = None  # None: whatever the DeepSpeed config says (off when it says nothing)
    checkpoint_blocks: bool | None = None  # None: the model section's setting
    seed: int | None = None  # None: the run's top-level seed
    text_drop: float = 0.1
    text_tokenizer: Literal["bpe", "bytes"] = "bpe"
    directions: list[str] = field(default_factory=lambda: list(PAPER_DIRECTIONS))
    loss_region: Literal["patch", "full"] = "patch"
    save_every: int = 1000  # optimizer steps (saved at the end of the batch that reaches it)
    keep_last: int = 3
    log_every: int = 100  # optimizer steps between log lines
    tensorboard_dir: str | None = None  # default run_dir/train/tb
    checkpoint_dir: str | None = None  # default run_dir/train/checkpoints
    sample_every: int = 0  # optimizer steps between decoded sample images (needs a `vqgan` section); 0 = off
    peak_tflops: float | None = None  # per device, for MFU; default per device (pipeline.training.monitor)
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    dist_timeout_minutes: int = 30
    export: bool = True
    # Add `items_by_rank` (the item ids each rank trained on) to every metrics.jsonl record: an audit of
    # the data order, e.g. that a resume on another number of ranks skips and repeats nothing.
    record_items: bool = False
    # Local ranks the stage script starts (with torchrun) when no LAUNCHER is set: the demo trains on
    # two CPU ranks this way. Under an explicit launcher the launcher decides.
    nproc_per_node: int = 1

    def __post_init__(self):
        problems = []
        for name in ("micro_batch", "global_batch", "epochs", "save_every", "keep_last", "log_every",
                     "dist_timeout_minutes", "nproc_per_node"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("max_steps must be >= 1")
        if not self.lr > 0:
            problems.append("lr must be > 0")
        if not 0 <= self.warmup_fraction < 1:
            problems.append("warmup_fraction must be in [0, 1)")
        if not 0 <= self.text_drop <= 1:
            problems.append("text_drop must be in [0, 1]")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append("min_lr_ratio must be in [0, 1]")
        if self.grad_clip < 0 or self.sample_every < 0:
            problems.append("grad_clip and sample_every must be >= 0")
        if not self.directions:
            problems.append("directions must name at least one direction")
        for d in self.directions:
            try:
                Direction.parse(d)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise ValueError("; ".join(problems))


def read_train_section(cfg: RunConfig) -> TrainSection:
    return cfg.section("train", TrainSection)


def checkpoint_dir(cfg: RunConfig, sec: TrainSection) -> Path:
    return cfg.resolve(sec.checkpoint_dir) if sec.checkpoint_dir else cfg.run_dir / "train" / "checkpoints"


def data_dir(cfg: RunConfig, sec: TrainSection) -> Path:
    if sec.data:
        return cfg.resolve(sec.data)
    return cfg.run_dir / "tokens" / ("single_image" if sec.windows is not None else "images/train")


# ----------------------------------------------------------------------------- DeepSpeed config


def load_ds_config(cfg: RunConfig, sec: TrainSection) -> tuple[dict, Path]:
    name = sec.ds_config
    path = REPO_DS_CONFIGS / f"{name}.json" if "/" not in name and not name.endswith(".json") else cfg.resolve(name)
    if not path.is_file():
        shipped = sorted(p.stem for p in REPO_DS_CONFIGS.glob("*.json"))
        raise ConfigError(f"{cfg.path}: train.ds_config: {path} not found (shipped configs: {shipped})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    return deep_merge(data, sec.ds_overrides), path


def _owned(ds: dict, key: str, value, where: str) -> None:
    """Set a trainer-owned key, refusing a JSON value that says otherwise."""
    if key in ds and ds[key] != value:
        raise ConfigError(f"{where}: sets {key} = {ds[key]!r} but the train section gives {value!r}; "
                          f"remove it from the DeepSpeed config (the trainer owns it)")
    ds[key] = value


def finalize_ds_config(ds: dict, sec: TrainSection, world: int, gas: int, where: str) -> tuple[dict, bool]:
    """The DeepSpeed config the engine gets, and whether training runs in bf16."""
    ds = json.loads(json.dumps(ds))
    if "scheduler" in ds:
        raise ConfigError(f"{where}: has a 'scheduler'; the trainer owns the LR schedule "
                          "(train.lr, warmup_fraction, lr_decay)")
    if ds.get("fp16", {}).get("enabled"):
        raise ConfigError(f"{where}: fp16 is not supported (loss-scale skips would desynchronise the patch-step "
                          "schedule); use bf16")
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    if stage not in (1, 2, 3):
        raise ConfigError(f"{where}: ZeRO stage {stage}; use 1, 2 or 3 (the export consolidates ZeRO checkpoints)")
    _owned(ds, "train_micro_batch_size_per_gpu", sec.micro_batch, where)
    _owned(ds, "gradient_accumulation_steps", gas, where)
    _owned(ds, "train_batch_size", sec.micro_batch * gas * world, where)
    _owned(ds, "gradient_clipping", sec.grad_clip, where)
    json_bf16 = bool(ds.get("bf16", {}).get("enabled", False))
    bf16 = json_bf16 if sec.bf16 is None else sec.bf16
    if sec.bf16 is not None and "bf16" in ds and json_bf16 != sec.bf16:
        raise ConfigError(f"{where}: bf16.enabled = {json_bf16} but train.bf16 = {sec.bf16}")
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    opt = ds.setdefault("optimizer", {"type": "Adam", "params": {}})
    if str(opt.get("type", "")).lower() not in ("adam", "adamw"):
        raise ConfigError(f"{where}: optimizer type {opt.get('type')!r}; the paper's set-up is Adam")
    params = opt.setdefault("params", {})
    for key, value in (("lr", sec.lr), ("betas", list(sec.betas)), ("eps", sec.eps),
                       ("weight_decay", sec.weight_decay)):
        if key in params and params[key] != value:
            raise ConfigError(f"{where}: optimizer.params.{key} = {params[key]!r} but the train section "
                              f"gives {value!r}")
        params[key] = value
    ds.setdefault("steps_per_print", 10**9)
    return ds, bf16


def lr_lambda(total_steps: int, warmup_steps: int, decay: str, min_ratio: float):
    """LR multiplier after `s` optimizer steps: linear warm-up, then constant / cosine / linear decay."""
    def f(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        if decay == "constant":
            return 1.0
        p = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * p)) if decay == "cosine" else 1 - p
        return min_ratio + (1 - min_ratio) * shape
    return f


@dataclass
class Plan:
    accumulation: int
    steps_per_batch: int  # optimizer steps per global batch
    gas: int  # DeepSpeed gradient_accumulation_steps
    batches_per_epoch: int
    total_batches: int
    total_steps: int
    warmup_steps: int


def plan_run(sec: TrainSection, world: int, n_items: int, patches: int) -> Plan:
    accumulation, rest = divmod(sec.global_batch, sec.micro_batch * world)
    if rest or accumulation < 1:
        raise ConfigError(f"train.global_batch {sec.global_batch} is not a multiple of micro_batch "
                          f"{sec.micro_batch} x {world} ranks")
    per_batch = patches if sec.loss_region == "patch" else 1
    gas = accumulation if sec.loss_region == "patch" else accumulation * patches
    bpe = n_items // sec.global_batch
    total_batches = sec.epochs * bpe
    if sec.max_steps is not None:
        total_batches = min(total_batches, -(-sec.max_steps // per_batch))
    total_steps = total_batches * per_batch
    return Plan(accumulation, per_batch, gas, bpe, total_batches, total_steps,
                int(round(sec.warmup_fraction * total_steps)))


def compat_train_settings(sec: TrainSection, zero_stage: int, grid_codes, vocab: int) -> dict:
    """Run settings a resumed run must share with its checkpoint (pipeline.training.checkpoint): how the saved
    optimizer state is laid out (ZeRO stage) and what its data position and step count mean (global batch,
    loss region, grid). Optimisation settings (lr, Adam, clipping, schedule length) may change: they apply
    from the resume on. The number of ranks may change too (pipeline.training.universal)."""
    return {"global_batch": sec.global_batch, "loss_region": sec.loss_region, "code_grid": list(grid_codes),
            "token_set_vocab": vocab, "zero_stage": zero_stage}


def monitor_dir(cfg: RunConfig, sec: TrainSection) -> Path:
    return cfg.resolve(sec.tensorboard_dir) if sec.tensorboard_dir else cfg.run_dir / "train" / "tb"
