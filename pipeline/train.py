"""Stage 60: train the renderer with render-and-optimize (paper Algorithm 1) on DeepSpeed.

    python -m pipeline.train --config run.yaml                       # one process (sets rank variables itself)
    torchrun --nproc_per_node 8 -m pipeline.train --config run.yaml  # one node
    deepspeed --hostfile ds_configs/hostfile.example --module pipeline.train --config run.yaml   # several nodes
    (or one torchrun per node: --nnodes N --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT)

Reads sections `model` (pipeline.renderer_io) and `train` (TrainSection below); writes run_dir/train/:
checkpoints/ (pipeline.checkpoint), tb/ (tensorboard), metrics.jsonl (pipeline.monitor),
text_tokenizer.json and export/ (pipeline.export). A run resumes from the latest checkpoint by itself.

Optimisation (the paper's set-up, section 4.1): Adam, lr 1e-4, global batch 256 = micro batch x
accumulation x ranks, linear warm-up over 5% of the run counted in optimizer steps (= patch steps),
then constant (the paper names no decay; `lr_decay: cosine|linear` is available). Our choices where
the paper is silent: Adam betas (0.9, 0.999), no weight decay, gradient clipping at 1.0, captions
dropped with probability 0.1 for classifier-free guidance, the direction drawn uniformly per batch
from the paper's four.

DeepSpeed config: `train.ds_config` names a JSON file (a bare name like `zero3` means
ds_configs/zero3.json of this repository) and `train.ds_overrides` is merged into it. The trainer
owns batch sizes, accumulation, lr / Adam settings, clipping and precision and writes them from the
train section; a JSON file that sets one of them to a different value is an error, not a silent
override. The export uses zero_to_fp32, so the ZeRO stage must be 1, 2 or 3.

Run-control flags (not part of the config, so a resumed run is checked against the same settings):
`--stop-after-steps K` stops at the first batch boundary at or after optimizer step K, saves and
exits (SIGTERM / SIGINT do the same at the end of the current batch); `--no-export`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model.directions import PAPER_DIRECTIONS, Direction
from pipeline.config import ConfigError, RunConfig, load_config

log = logging.getLogger("train")

REPO_DS_CONFIGS = Path(__file__).resolve().parent.parent / "ds_configs"
# Keys of the DeepSpeed config that the train section decides.
OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
              "gradient_clipping")


@dataclass
class TrainSection:
    data: str | None = None  # token set folder; default run_dir/tokens/images/train
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
    peak_tflops: float | None = None  # per device, for MFU; default per device (pipeline.monitor)
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    dist_timeout_minutes: int = 30
    export: bool = True
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
    return cfg.resolve(sec.data) if sec.data else cfg.run_dir / "tokens" / "images" / "train"


# ----------------------------------------------------------------------------- DeepSpeed config


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
    return _merge(data, sec.ds_overrides), path


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


# ----------------------------------------------------------------------------- launcher environment


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_launcher_env() -> bool:
    """A plain `python -m pipeline.train` is rank 0 of 1: set what a launcher would (DeepSpeed otherwise
    looks for mpi4py). Returns True when it did."""
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        os.environ.setdefault("LOCAL_RANK", "0")
        return False
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    return True


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


def compat_train_settings(sec: TrainSection, world: int, zero_stage: int, grid_codes, vocab: int) -> dict:
    """Run settings a resumed run must share with its checkpoint (pipeline.checkpoint): what the saved
    state is partitioned by (ranks, ZeRO stage) and what its data position and step count mean.
    Optimisation settings (lr, Adam, clipping, schedule length) may change: they apply from the resume on."""
    return {"global_batch": sec.global_batch, "loss_region": sec.loss_region, "code_grid": list(grid_codes),
            "token_set_vocab": vocab, "world_size": world, "zero_stage": zero_stage}


def apply_optimizer_settings(engine, sec: TrainSection, schedule) -> list[str]:
    """After loading a checkpoint: this run's lr schedule and Adam settings replace the saved ones
    (DeepSpeed restores the checkpoint's); returns the settings that changed."""
    changed = []
    opt = engine.basic_optimizer
    want = {"betas": tuple(sec.betas), "eps": sec.eps, "weight_decay": sec.weight_decay}
    for group in opt.param_groups:
        for key, value in want.items():
            old = tuple(group[key]) if key == "betas" else group[key]
            if old != value:
                changed.append(f"{key} {old} -> {value}")
                group[key] = value
    sched = engine.lr_scheduler
    if list(sched.base_lrs) != [sec.lr] * len(sched.base_lrs):
        changed.append(f"lr {sched.base_lrs[0]} -> {sec.lr}")
    sched.base_lrs = [sec.lr] * len(opt.param_groups)
    sched.lr_lambdas = [schedule] * len(opt.param_groups)
    for group, base in zip(opt.param_groups, sched.base_lrs):
        group["lr"] = base * schedule(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in opt.param_groups]
    return sorted(set(changed))


def run_training(cfg: RunConfig, sec: TrainSection, stop_after_steps: int | None = None, export: bool = True):
    """Set up and run training on this rank (the launcher's environment must be set); returns the Trainer."""
    import datetime
    import random

    import numpy as np
    import torch

    from model.renderer import Renderer
    from pipeline import text_tokenizer
    from pipeline.checkpoint import CheckpointError, CheckpointStore, check_compatible, compatibility_record
    from pipeline.monitor import TrainMonitor, VQGANPreview, peak_flops
    from pipeline.ranks import rank_info
    from pipeline.renderer_io import export_dir, model_config
    from pipeline.train_data import DataError, GlobalBatchSampler, TrainData, check_token_set, training_captions
    from pipeline.train_loop import Trainer, mark_zero3_leaf_modules, sync_errors

    ranks = rank_info()
    rank, world = ranks.rank, ranks.world_size
    model_cfg = model_config(cfg)
    if sec.checkpoint_blocks is not None:
        model_cfg = model_cfg.replace(checkpoint_blocks=sec.checkpoint_blocks)
    seed = cfg.seed if sec.seed is None else sec.seed
    train_dir = cfg.run_dir / "train"
    store = CheckpointStore(checkpoint_dir(cfg, sec), sec.keep_last)
    folder = data_dir(cfg, sec)

    # Checks that need no process group. One rank alone fails at once; several share the verdict below,
    # so that a problem seen by one rank never leaves the others waiting in a collective.
    err, resume_tag, saved_meta = None, None, None
    try:
        ts, grid = check_token_set(folder, model_cfg, sec.global_batch)
        plan = plan_run(sec, world, len(ts), len(grid))
        ds_raw, ds_path = load_ds_config(cfg, sec)
        ds_cfg, bf16 = finalize_ds_config(ds_raw, sec, world, plan.gas, str(ds_path))
        record = compatibility_record(model_cfg.to_dict(), compat_train_settings(
            sec, world, int(ds_cfg["zero_optimization"]["stage"]), ts.meta.grid, ts.meta.vocab_size))
        resume_tag = store.latest_tag()
        if resume_tag is not None:
            saved_meta = store.read_meta(resume_tag)
            check_compatible(saved_meta.get("compat", {}), record, str(store.folder / resume_tag))
    except (ConfigError, DataError, CheckpointError) as e:
        err = e
    if world == 1 and err is not None:
        raise err

    import deepspeed

    if torch.cuda.is_available():
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = sec.dist_backend if sec.dist_backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(minutes=sec.dist_timeout_minutes))
    sync_errors(err, "start-up checks")

    tokenizer, tok_path, err = None, train_dir / "text_tokenizer.json", None
    if rank == 0:
        try:
            gone = store.remove_stale()
            if gone:
                log.info("removed incomplete or superseded checkpoint folders %s", gone)
            if model_cfg.has_text:
                text_tokenizer.ensure(tok_path, training_captions(ts), sec.text_tokenizer, model_cfg.text_vocab_size)
        except (text_tokenizer.TokenizerError, CheckpointError, OSError) as e:
            err = e
    sync_errors(err, "text tokenizer set-up")
    if model_cfg.has_text:
        tokenizer = text_tokenizer.TextTokenizer.load(tok_path)
        if saved_meta is not None and saved_meta.get("tokenizer_sha256") != tokenizer.sha256:
            raise CheckpointError(f"{tok_path}: differs from the tokenizer the checkpoint {resume_tag} was "
                                  "trained with (sha256 mismatch); restore the original file")

    torch.manual_seed(seed)  # the same initial weights on every rank
    model = Renderer(model_cfg)
    n_params = model.num_parameters()
    if ds_cfg["zero_optimization"]["stage"] == 3:
        mark_zero3_leaf_modules(model)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + 1 + rank)
    schedule = lr_lambda(plan.total_steps, plan.warmup_steps, sec.lr_decay, sec.min_lr_ratio)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_cfg,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))

    sampler = GlobalBatchSampler(len(ts), sec.global_batch, sec.micro_batch, plan.accumulation, rank, world, seed)
    data = TrainData(ts, sampler, tokenizer, model_cfg.text_len, sec.text_drop, seed, device)
    meta = {"compat": record, "model": model_cfg.to_dict(), "world_size": world, "ds_config": ds_cfg,
            "tokenizer_sha256": tokenizer.sha256 if tokenizer else None,
            "tokenizer_path": str(tok_path) if tokenizer else None, "token_set": str(folder)}
    preview = None
    if sec.sample_every and rank == 0:
        ok, why = VQGANPreview.available(cfg)
        preview = VQGANPreview(cfg, device) if ok else None
        if not ok:
            log.warning("train.sample_every is set but samples are off: %s", why)
    directions = [Direction.parse(d) for d in sec.directions]
    peak, peak_src = peak_flops(device, bf16, sec.peak_tflops)
    trainer = Trainer(engine, data, grid, directions, model_cfg, store, None, rank, seed, plan.total_batches,
                      sec.save_every, sec.loss_region, meta, device, sec.sample_every, preview)
    start = "a fresh start"
    if resume_tag is not None:
        client, rank_state = store.load(engine, resume_tag, rank)
        trainer.restore(client, rank_state)
        changed = apply_optimizer_settings(engine, sec, schedule)
        if changed:
            log.info("optimisation settings differ from the checkpoint's; from now on: %s", "; ".join(changed))
        start = (f"checkpoint {resume_tag} (optimizer step {engine.global_steps}, epoch {trainer.pos.epoch} "
                 f"batch {trainer.pos.batch}, {trainer.batches_done} batches done)")
    monitor = TrainMonitor(rank == 0, monitor_dir(cfg, sec), train_dir / "metrics.jsonl", plan.total_steps,
                           int(engine.global_steps), sec.log_every, peak, world)
    trainer.monitor = monitor
    log.info("world size %d (%s), ZeRO stage %d, %s; model %s: %d parameters; token set %s: %d items, code grid %s "
             "-> patch grid %dx%dx%d", world, backend, ds_cfg["zero_optimization"]["stage"],
             "bf16" if bf16 else "fp32", model_cfg.renderer, n_params, folder, len(ts),
             tuple(ts.meta.grid), grid.H, grid.W, grid.F)
    log.info("global batch %d = micro %d x accumulation %d x %d ranks; loss region %s: %d optimizer steps per "
             "batch; %d batches per epoch; %d batches = %d steps planned, warm-up %d steps; directions %s",
             sec.global_batch, sec.micro_batch, plan.accumulation, world, sec.loss_region, plan.steps_per_batch,
             plan.batches_per_epoch, plan.total_batches, plan.total_steps, plan.warmup_steps,
             [d.name for d in directions])
    log.info("starting from %s; peak FLOP/s for MFU: %s", start, peak_src)
    try:
        reason = trainer.fit(stop_after_steps)
    finally:
        monitor.close()
    log.info("training stopped (%s) at optimizer step %d; last checkpoint %s", reason, engine.global_steps,
             trainer.last_saved_tag or resume_tag)
    if export and reason == "finished":
        err = None
        if rank == 0:
            try:
                from pipeline.export import export_checkpoint

                export_checkpoint(store.folder, export_dir(cfg), trainer.last_saved_tag or resume_tag)
            except (CheckpointError, OSError) as e:
                err = e
        sync_errors(err, "export")
    return trainer


def monitor_dir(cfg: RunConfig, sec: TrainSection) -> Path:
    return cfg.resolve(sec.tensorboard_dir) if sec.tensorboard_dir else cfg.run_dir / "train" / "tb"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--stop-after-steps", type=int, default=None,
                    help="stop (and save) at the first batch boundary at or after this optimizer step")
    ap.add_argument("--no-export", action="store_true", help="skip the export at the end")
    ap.add_argument("--profile", default=None, help="train with the config's profile NAME laid over it "
                    "(e.g. the demo's video renderer)")
    ap.add_argument("--print-nproc", action="store_true",
                    help="print train.nproc_per_node and exit (used by stages/60_train.sh)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_nproc:
        try:
            print(read_train_section(load_config(args.config, args.profile)).nproc_per_node)
        except ConfigError as e:
            print(f"pipeline.train: {e}", file=sys.stderr)
            return 2
        return 0
    set_by_us = ensure_launcher_env()
    rank = int(os.environ["RANK"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    if set_by_us:
        log.info("no launcher environment: running as rank 0 of 1 (MASTER_PORT %s)", os.environ["MASTER_PORT"])
    from pipeline.checkpoint import CheckpointError
    from pipeline.shards import ShardError
    from pipeline.text_tokenizer import TokenizerError
    from pipeline.train_data import DataError
    from pipeline.train_loop import NonFiniteLoss, TrainingAborted

    try:
        cfg = load_config(args.config, args.profile)
        sec = read_train_section(cfg)
        run_training(cfg, sec, stop_after_steps=args.stop_after_steps, export=sec.export and not args.no_export)
    except (ConfigError, DataError, ShardError, CheckpointError, TokenizerError, NonFiniteLoss,
            TrainingAborted) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1
    finally:
        _shutdown_process_group()
    return 0


def _shutdown_process_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # the process is exiting anyway; never mask the real error
        pass


def _exit_now(code: int) -> None:
    """Leave without running C++ static destructors in a multi-rank run.

    Everything is written and flushed by now (checkpoints and the export are atomic and synced, the
    tensorboard writer is closed). Gloo/DeepSpeed background threads can still abort the interpreter's
    normal teardown ("terminate called without an active exception", seen intermittently on CPU
    ranks after a complete run), which a launcher would report as a failed rank.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    rc = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_now(rc)
    raise SystemExit(rc)
