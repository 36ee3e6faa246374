"""Render-and-optimize (paper Algorithm 1) for one global batch, and the collectives that keep ranks in step.

For each patch of the batch's generation order: select the context from the pool, render (forward),
`engine.backward(loss)`, `engine.step()`, add the detached states, remove the expired ones. With
gradient accumulation A (global batch = micro x A x ranks) each patch index runs A micro-batches,
each with its own pool, and DeepSpeed's accumulation boundary falls after the A-th: one optimizer
step per patch either way, so `engine.global_steps` advances by the number of patches per batch and
the LR schedule counts patch-steps. Loss region "full" (ablation) is the same loop with the DeepSpeed
accumulation set to A x patches, so the gradients of every patch are summed into a single step.

Every rank runs the same schedule on the same grid (one token set, one grid), so the per-step
collectives of ZeRO line up. Losses are summed on the device and reduced once per batch: a
non-finite loss anywhere becomes non-finite on every rank after that reduction, so all ranks stop
together with the same message (no rank is left waiting in a collective), before any checkpoint of
the damaged weights could be written.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from model.config import RenderConfig
from model.directions import Direction, Grid
from model.patches import get_patch, put_patch
from model.pool import ContextPool
from pipeline.errors import PipelineError
from pipeline.training.checkpoint import CheckpointError, CheckpointStore, capture_rng, restore_rng, tag_for
from pipeline.training.data import DataError, DataPosition, MicroBatch, TrainData
from pipeline.training.monitor import PhaseClock, Stopwatch, TrainMonitor, patch_train_flops

log = logging.getLogger("train")


class NonFiniteLoss(PipelineError, RuntimeError):
    """The loss became NaN or infinite; training stops and the last good checkpoint is kept."""


class TrainingAborted(PipelineError, RuntimeError):
    """Another rank failed; raised on the ranks that did not, with that rank's message."""


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sync_errors(err: BaseException | None, what: str) -> None:
    """Collective: if `what` failed on any rank, raise on every rank (the failing ranks their own error)."""
    if world() == 1:
        if err is not None:
            raise err
        return
    messages: list = [None] * world()
    dist.all_gather_object(messages, None if err is None else f"{type(err).__name__}: {err}")
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if not failed:
        return
    if err is not None:
        raise err
    r, m = failed[0]
    raise TrainingAborted(f"{what} failed on rank {r}: {m}")


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of boolean flags over all ranks."""
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    if world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def mark_zero3_leaf_modules(model: torch.nn.Module) -> None:
    """Make each rendering block one ZeRO-3 unit: all its parameters are gathered for its forward and
    backward together. Needed because a block's relative-position table enters the keys on a gradient
    branch that does not lead back to the block's sub-module inputs, so with per-sub-module gathering
    ZeRO-3 releases the table before its gradient is accumulated (a size-0 tensor error in backward)."""
    from deepspeed.utils import set_z3_leaf_modules

    from model.blocks import RenderBlock

    set_z3_leaf_modules(model, [RenderBlock])


@dataclass
class BatchResult:
    patch_losses: list[float]  # per patch index: mean over micro-batches and ranks
    step_lrs: list[float]  # per optimizer step taken in this batch
    step_grad_norms: list[float | None]
    context_tokens: list[int]  # per patch index: context tokens the patch attended to
    num_predicted: int  # tokens in the loss on this rank (all micro-batches, all patches)
    prediction: torch.Tensor | None  # [f, h, w] argmax codes of the first item (teacher-forced)


def _grad_norm(engine):
    try:
        g = engine.get_global_grad_norm()
    except (AttributeError, AssertionError):
        return None
    return g.detach() if torch.is_tensor(g) else g


class _NoClock:
    def start(self) -> None:
        pass

    def mark(self, phase: str) -> None:
        pass


def _floats(values: list) -> list[float | None]:
    """Device scalars to floats with one read-back, not one per value (None stays None)."""
    tensors = [v for v in values if torch.is_tensor(v)]
    read = iter(torch.stack([t.float() for t in tensors]).tolist()) if tensors else iter(())
    return [None if v is None else (next(read) if torch.is_tensor(v) else float(v)) for v in values]


def train_batch(engine, micro_batches: list[MicroBatch], grid: Grid, direction: Direction, cfg: RenderConfig,
                generator: torch.Generator | None = None, keep_prediction: bool = False,
                clock: PhaseClock | None = None) -> BatchResult:
    """Run Algorithm 1 over one batch (all its micro-batches) and return what happened.

    Nothing in the patch loop reads a device value back to the host (losses, token counts and grad norms
    stay on the device until the batch is done), so the host can queue patch n+1 while the device works."""
    device = micro_batches[0].codes.device
    clock = clock or _NoClock()
    schedule = direction.schedule(grid)
    pools = [ContextPool(grid, direction, cfg.expand) for _ in micro_batches]
    loss_sums = torch.zeros(len(schedule), device=device, dtype=torch.float32)
    prediction = torch.zeros_like(micro_batches[0].codes[:1]) if keep_prediction else None
    lrs, norms, context_tokens, predicted = [], [], [], 0
    clock.start()
    for n, coord in enumerate(schedule):
        for a, mb in enumerate(micro_batches):
            ctx = pools[a].context(coord, device)
            lr_used = engine.get_lr()[0]
            steps_before = engine.global_steps
            clock.mark("context")
            out = engine(get_patch(mb.codes, coord, cfg.patch), ctx, mb.text_ids, mb.text_mask,
                         generator=generator, direction=direction)
            clock.mark("forward")
            engine.backward(out.loss)
            clock.mark("backward")
            engine.step()
            clock.mark("step")
            if engine.global_steps != steps_before:  # an accumulation boundary: a real optimizer step
                lrs.append(lr_used)
                norms.append(_grad_norm(engine))
            loss_sums[n] += out.loss.detach().float()
            predicted = predicted + out.num_predicted  # P-NAR's is a device tensor: read once, below
            if a == 0 and prediction is not None:
                put_patch(prediction, coord, cfg.patch, out.logits[:1].detach().argmax(-1))
            if a == 0:
                context_tokens.append(ctx.length)
            clock.mark("bookkeeping")
            pools[a].add(coord, out.states)
            pools[a].remove(coord)
            clock.mark("pool_update")
    if world() > 1:
        dist.all_reduce(loss_sums)
    losses = (loss_sums / (len(micro_batches) * world())).tolist()
    bad = [n for n, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        raise NonFiniteLoss(f"non-finite loss {losses[bad[0]]} at patch index {bad[0]} (patch {schedule[bad[0]]}, "
                            f"direction {direction.name}) in the batch ending at optimizer step {engine.global_steps}; "
                            "stopping without saving (the last checkpoint is the last good one). Lower train.lr, "
                            "enable train.grad_clip, or check the data.")
    return BatchResult(
        patch_losses=losses, step_lrs=[float(x) for x in lrs],
        step_grad_norms=_floats(norms),
        context_tokens=context_tokens, num_predicted=int(predicted),
        prediction=None if prediction is None else prediction[0].cpu())


# ----------------------------------------------------------------------------- the run over batches


class Trainer:
    """Batches, directions, checkpoints, signals and monitoring around `train_batch`.

    State that a resume restores: the engine (model, optimizer, LR schedule, global step: DeepSpeed),
    the data position, the direction generator (shared by all ranks), and per rank every random
    generator (python, numpy, torch, CUDA and the P-NAR mask generator).
    """

    def __init__(self, engine, data: TrainData, grid: Grid, directions: list[Direction], cfg: RenderConfig,
                 store: CheckpointStore, monitor: TrainMonitor | None, rank: int, seed: int, total_batches: int,
                 save_every: int, loss_region: str, meta: dict, device: torch.device, sample_every: int = 0,
                 preview=None, record_items: bool = False):
        self.engine, self.data, self.grid, self.directions, self.cfg = engine, data, grid, directions, cfg
        self.store, self.monitor, self.rank, self.device = store, monitor, rank, device
        self.total_batches, self.save_every, self.loss_region = total_batches, save_every, loss_region
        self.meta, self.sample_every, self.preview, self.record_items = meta, sample_every, preview, record_items
        self.direction_gen = torch.Generator().manual_seed(seed + 0xD1)  # same seed on every rank
        self.seed = seed
        self.pnar_gen = torch.Generator().manual_seed(seed * 1009 + 7919 * (rank + 1))
        self.pos = DataPosition()
        self.batches_done = 0
        self.last_saved_step: int | None = None
        self.last_saved_tag: str | None = None
        self.signal_name: str | None = None
        self.stop_reason: str | None = None

    # ------------------------------------------------------------------ checkpoint state
    def client_state(self) -> dict:
        return {"trainer": {"position": self.pos.to_dict(), "batches_done": self.batches_done,
                            "global_steps": int(self.engine.global_steps),
                            "direction_generator": self.direction_gen.get_state()}}

    def restore(self, client: dict, rank_state: dict | None) -> None:
        t = client.get("trainer")
        if t is None:
            raise CheckpointError("the checkpoint holds no trainer state (not written by pipeline.training.train)")
        if int(t["global_steps"]) != int(self.engine.global_steps):
            raise CheckpointError(f"checkpoint's trainer state is at step {t['global_steps']} but its engine "
                                  f"state at {self.engine.global_steps}")
        self.pos = DataPosition.from_dict(t["position"])
        self.batches_done = int(t["batches_done"])
        self.direction_gen.set_state(t["direction_generator"])
        if rank_state is not None:
            restore_rng(rank_state, {"pnar": self.pnar_gen})
        else:  # saved by another number of ranks: N streams cannot become M; start M new ones, reproducibly
            step = int(t["global_steps"])
            random.seed(self.seed * 1_000_003 + step * 131 + self.rank)
            np.random.seed((self.seed * 1_000_003 + step * 131 + self.rank) % 2**32)
            torch.manual_seed(self.seed * 1_000_003 + step * 131 + self.rank + 1)
            self.pnar_gen.manual_seed(self.seed * 1009 + 7919 * (self.rank + 1) + step * 104_729)
        self.last_saved_step = int(self.engine.global_steps)

    def save(self) -> str:
        step = int(self.engine.global_steps)
        tag = tag_for(step)
        meta = {**self.meta, "global_steps": step, "position": self.pos.to_dict(),
                "batches_done": self.batches_done, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.store.save(self.engine, tag, self.client_state(), meta, capture_rng({"pnar": self.pnar_gen}),
                        self.rank, barrier=_barrier)
        self.last_saved_step, self.last_saved_tag = step, tag
        if self.rank == 0:
            log.info("checkpoint %s saved (data position epoch %d batch %d)", tag, self.pos.epoch, self.pos.batch)
        return tag

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:  # a second signal: stop now, without saving
            raise KeyboardInterrupt(f"second {name}")
        self.signal_name = name
        log.warning("%s received: finishing the current batch, then saving and exiting", name)

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after_steps: int | None = None) -> str:
        """Train until the planned number of batches is done or a stop is requested; returns why it ended."""
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.stop_reason = self._fit(stop_after_steps)
            return self.stop_reason
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

    def _fit(self, stop_after_steps: int | None) -> str:
        engine, sw = self.engine, Stopwatch(self.device)
        items_per_batch = self.data.sampler.global_batch
        tokens_per_item = len(self.grid) * self.cfg.tokens_per_patch
        while self.batches_done < self.total_batches:
            reason = None
            if self.signal_name:
                reason = f"signal {self.signal_name}"
            elif stop_after_steps is not None and engine.global_steps >= stop_after_steps:
                reason = f"--stop-after-steps {stop_after_steps}"
            err, micro = None, None
            if reason is None:
                try:
                    micro = self.data.load(self.pos)
                except DataError as e:
                    err = e
            stop_any, err_any = any_rank([reason is not None, err is not None], self.device)
            if err_any:
                sync_errors(err, f"loading batch {self.pos.batch} of epoch {self.pos.epoch}")
            if stop_any:
                if self.last_saved_step != engine.global_steps:
                    self.save()
                return reason or "a stop requested on another rank"
            direction = self.directions[int(torch.randint(len(self.directions), (1,), generator=self.direction_gen))]
            step0 = int(engine.global_steps)
            per_batch = len(self.grid) if self.loss_region == "patch" else 1
            due_sample = bool(self.preview) and self.sample_every > 0 and self.rank == 0 and \
                (step0 + per_batch) // self.sample_every > step0 // self.sample_every
            sw.start()
            res = train_batch(engine, micro, self.grid, direction, self.cfg, self.pnar_gen, keep_prediction=due_sample)
            seconds = sw.seconds()
            record = {"step": int(engine.global_steps), "epoch": self.pos.epoch, "batch": self.pos.batch,
                      "direction": direction.name, "patch_losses": res.patch_losses, "items": items_per_batch,
                      "tokens": items_per_batch * tokens_per_item, "seconds": seconds}
            if self.record_items:  # what each rank trained on (an audit of the data order, e.g. across resumes)
                record["items_by_rank"] = _gather([i for mb in micro for i in mb.ids])
            self.pos = self.pos.advanced(self.data.batches_per_epoch)
            self.batches_done += 1
            step_losses = res.patch_losses if self.loss_region == "patch" else \
                [sum(res.patch_losses) / len(res.patch_losses)]
            flops = items_per_batch * sum(patch_train_flops(self.cfg, s) for s in res.context_tokens)
            self.monitor.batch(record, step_losses, res.step_lrs, res.step_grad_norms, flops, self.device)
            if due_sample and res.prediction is not None:
                self._sample_image(micro[0].codes[0], res.prediction, record["step"])
            step = int(engine.global_steps)
            if step // self.save_every > step0 // self.save_every:
                self.save()
        if self.last_saved_step != engine.global_steps:
            self.save()
        return "finished"

    def _sample_image(self, truth: torch.Tensor, prediction: torch.Tensor, step: int) -> None:
        try:
            image = self.preview.side_by_side(truth, prediction)
        except Exception as e:  # a preview must never stop training
            log.warning("sample image at step %d failed (%s); disabling samples", step, e)
            self.preview = None
            return
        self.monitor.image("samples/truth_left_teacher_forced_prediction_right", image, step)


def _gather(obj) -> list:
    """`obj` of every rank, in rank order (collective)."""
    if world() == 1:
        return [obj]
    out: list = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def _barrier() -> None:
    if world() > 1:
        dist.barrier()
