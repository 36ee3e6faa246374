"""Stage 60: train the renderer with render-and-optimize (paper Algorithm 1) on DeepSpeed.

    python -m pipeline.training.train --config run.yaml                      # one process (rank variables set here)
    torchrun --nproc_per_node 8 -m pipeline.training.train --config run.yaml # one node
    deepspeed --hostfile ds_configs/hostfile.example --module pipeline.training.train --config run.yaml
    (or one torchrun per node: --nnodes N --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT)

Reads sections `model` (pipeline.formats.renderer_io) and `train` (pipeline.training.settings); writes run_dir/train/:
checkpoints/ (pipeline.training.checkpoint), tb/ (tensorboard), metrics.jsonl (pipeline.training.monitor),
text_tokenizer.json and export/ (pipeline.training.export). A run resumes from the latest checkpoint by itself.

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
exits (SIGTERM / SIGINT do the same at the end of the current batch); `--no-export`; `--print-nproc` and
`--print-plan` (batches per epoch, optimizer steps, warm-up, as JSON) print and exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from model.directions import Direction
from pipeline.config import ConfigError, RunConfig, load_config
from pipeline.errors import EXIT_OK, EXIT_STOPPED, entry_point, exit_status
from pipeline.training.settings import (
    TrainSection,
    checkpoint_dir,
    compat_train_settings,
    data_dir,
    finalize_ds_config,
    load_ds_config,
    lr_lambda,
    monitor_dir,
    plan_run,
    read_train_section,
)

log = logging.getLogger("train")

# ----------------------------------------------------------------------------- launcher environment


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_launcher_env() -> bool:
    """A plain `python -m pipeline.training.train` is rank 0 of 1: set what a launcher would (DeepSpeed otherwise
    looks for mpi4py). Returns True when it did."""
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        os.environ.setdefault("LOCAL_RANK", "0")
        return False
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    return True


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
    from pipeline.formats import text_tokenizer
    from pipeline.formats.renderer_io import export_dir, model_config
    from pipeline.ranks import rank_info
    from pipeline.training import universal
    from pipeline.training.checkpoint import CheckpointError, CheckpointStore, check_compatible, compatibility_record
    from pipeline.training.data import (
        DataError,
        GlobalBatchSampler,
        make_train_data,
        open_training_set,
        training_captions,
    )
    from pipeline.training.loop import Trainer, mark_zero3_leaf_modules, sync_errors
    from pipeline.training.monitor import TrainMonitor, VQGANPreview, peak_flops

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
    err, resume_tag, saved_meta, saved_world = None, None, None, world
    try:
        ts, grid, windows = open_training_set(folder, model_cfg, sec.global_batch, sec.windows, seed)
        plan = plan_run(sec, world, len(ts), len(grid))
        ds_raw, ds_path = load_ds_config(cfg, sec)
        ds_cfg, bf16 = finalize_ds_config(ds_raw, sec, world, plan.gas, str(ds_path))
        record = compatibility_record(model_cfg.to_dict(), compat_train_settings(
            sec, int(ds_cfg["zero_optimization"]["stage"]), ts.meta.grid, ts.meta.vocab_size))
        if rank == 0:  # before anything is read or removed: a second run must not touch a running one's files
            store.lock(f"config {cfg.path}, {world} rank(s)")
        resume_tag = store.latest_tag()
        if resume_tag is not None:
            saved_meta = store.read_meta(resume_tag)
            check_compatible(saved_meta.get("compat", {}), record, str(store.folder / resume_tag))
            saved_world = int(saved_meta.get("world_size", world))
    except (ConfigError, DataError, CheckpointError, OSError) as e:
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

    # Another number of ranks than the checkpoint's: load a universal copy of it (pipeline.training.universal).
    universal_root = universal.root(store.folder) if saved_world != world else None
    tokenizer, tok_path, err = None, train_dir / "text_tokenizer.json", None
    if rank == 0:
        try:
            gone = store.remove_stale()
            if gone:
                log.info("removed incomplete or superseded checkpoint folders %s", gone)
            if model_cfg.has_text:
                text_tokenizer.ensure(tok_path, training_captions(ts), sec.text_tokenizer, model_cfg.text_vocab_size)
            if universal_root is not None:
                universal.convert(store.folder, resume_tag, saved_world, world)
        except (text_tokenizer.TokenizerError, CheckpointError, OSError) as e:
            err = e
    sync_errors(err, "set-up on rank 0 (stale checkpoints, text tokenizer, universal checkpoint)")
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
    engine_cfg = ds_cfg if universal_root is None else {**ds_cfg, "checkpoint": {
        **ds_cfg.get("checkpoint", {}), "load_universal": True}}
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=engine_cfg,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))

    sampler = GlobalBatchSampler(len(ts), sec.global_batch, sec.micro_batch, plan.accumulation, rank, world, seed)
    data = make_train_data(ts, windows, sampler, tokenizer, model_cfg.text_len, sec.text_drop, seed, device)
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
                      sec.save_every, sec.loss_region, meta, device, sec.sample_every, preview, sec.record_items)
    start = "a fresh start"
    if resume_tag is not None:
        client, rank_state = store.load(engine, resume_tag, rank, universal_root)
        trainer.restore(client, rank_state)
        changed = apply_optimizer_settings(engine, sec, schedule)
        if changed:
            log.info("optimisation settings differ from the checkpoint's; from now on: %s", "; ".join(changed))
        start = (f"checkpoint {resume_tag} (optimizer step {engine.global_steps}, epoch {trainer.pos.epoch} "
                 f"batch {trainer.pos.batch}, {trainer.batches_done} batches done)")
        if universal_root is not None:
            start += (f", saved by {saved_world} rank(s) and resumed on {world} through its universal checkpoint "
                      "(model, optimizer, schedule and data position carried over; per-rank random generators "
                      "re-seeded)")
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
    last = trainer.last_saved_tag or resume_tag
    if reason == "finished":
        log.info("training finished at optimizer step %d; last checkpoint %s", engine.global_steps, last)
    elif rank == 0:
        log.warning("stopped, resumable: %s at optimizer step %d; checkpoint %s holds everything; run the stage "
                    "again to continue (exit status %d)", reason, engine.global_steps, last, EXIT_STOPPED)
    if export and reason == "finished":
        err = None
        if rank == 0:
            try:
                from pipeline.training.export import export_checkpoint

                export_checkpoint(store.folder, export_dir(cfg), trainer.last_saved_tag or resume_tag)
            except (CheckpointError, OSError) as e:
                err = e
        sync_errors(err, "export")
    return trainer


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
    ap.add_argument("--print-plan", action="store_true",
                    help="print the run's plan (batches per epoch, optimizer steps...) as JSON and exit "
                         "(used by pipeline.ablation)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    return ap.parse_args(argv)


def print_plan(config: str, profile: str | None) -> int:
    """The plan (pipeline.training.settings.Plan) for train.nproc_per_node ranks, as one JSON line."""
    import dataclasses
    import json

    from pipeline.formats.renderer_io import model_config
    from pipeline.training.data import check_token_set

    cfg = load_config(config, profile)
    sec = read_train_section(cfg)
    ts, grid = check_token_set(data_dir(cfg, sec), model_config(cfg), sec.global_batch)
    plan = plan_run(sec, sec.nproc_per_node, len(ts), len(grid))
    print(json.dumps({**dataclasses.asdict(plan), "patches_per_item": len(grid), "epochs": sec.epochs,
                      "nproc_per_node": sec.nproc_per_node}))
    return 0


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_nproc:
        print(read_train_section(load_config(args.config, args.profile)).nproc_per_node)
        return 0
    if args.print_plan:
        return print_plan(args.config, args.profile)
    set_by_us = ensure_launcher_env()
    rank = int(os.environ["RANK"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    if set_by_us:
        log.info("no launcher environment: running as rank 0 of 1 (MASTER_PORT %s)", os.environ["MASTER_PORT"])
    try:
        cfg = load_config(args.config, args.profile)
        sec = read_train_section(cfg)
        trainer = run_training(cfg, sec, stop_after_steps=args.stop_after_steps,
                               export=sec.export and not args.no_export)
    finally:
        _shutdown_process_group()
    return exit_status(EXIT_OK if trainer.stop_reason == "finished" else EXIT_STOPPED, launched=not set_by_us)


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
