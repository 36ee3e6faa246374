"""Training telemetry: tensorboard scalars, a metrics log, a progress bar, throughput and MFU.

Rank 0 writes; the other ranks hold a disabled monitor. Everything goes to three places:
- tensorboard (run_dir/train/tb by default): per optimizer step `train/loss`, `train/lr`,
  `train/grad_norm`; per batch `train/loss_batch`, `loss_by_patch/NNN` (the loss at patch index n of
  the generation order, averaged over the batch: how much the context helps shows here),
  `perf/tokens_per_s`, `perf/samples_per_s`, `perf/seconds_per_step`, `perf/mfu`, `perf/peak_memory_gib`;
- run_dir/train/metrics.jsonl, one JSON record per batch (what tests and scripts read);
- a tqdm bar over optimizer steps (on a terminal) and a log line every `log_every` steps.

MFU (model FLOPs utilisation) = model FLOPs per second / peak FLOP/s of the device.

Model FLOPs of one patch step, per item (2 FLOPs per multiply-add; D width, L layers, r MLP ratio,
V codebook, T tokens per patch, Tq query tokens = T + 1 for AR (the BOS) else T, S context tokens
selected from the pool for this patch, Lt = text_len + 1 text positions incl. the null token,
Lx text-encoder layers):

    per block, own tokens    F_own  = 8 D^2 Tq (q, kv, out) + 4 r D^2 Tq (MLP) + 4 Tq (S + Tq) D (attention)
                                      + [text] 4 D^2 Tq (cross q, out) + 4 D^2 Lt (cross kv) + 4 Tq Lt D
    per block, context keys  F_ctx  = 4 D^2 S (kv projection of the stored states, redone every patch)
    head                     F_head = 2 D V T
    text encoder             F_text = Lx (8 D^2 Lt + 4 r D^2 Lt + 4 Lt^2 D)
    forward                  F_fwd  = L (F_own + F_ctx) + F_head + F_text
    training                 F      = 3 F_fwd - L F_ctx  (backward = 2x forward, except that the stored
                                      states are detached: their kv projection gets no input gradient)
                                      + L F_own' + L F_ctx'  for the extra no-grad pass that makes the
                                      states to store (NAR, P-NAR, and AR with context transfer off;
                                      F_own' without the text-encoder and head, S' = 0 without transfer).

Activation-checkpoint recomputation is not counted (MFU counts model FLOPs, not hardware FLOPs). Checked
against torch.utils.flop_counter on a forward + backward with a context of 1-4 patches: within 6%
(tiny AR / P-NAR / no-transfer, a 2-layer base).

Peak FLOP/s: `train.peak_tflops` when set, else a per-device default (dense, no sparsity):
H100 / H200 SXM 989 TFLOP/s bf16, 495 TF32, 67 fp32; A100 312 bf16, 156 TF32, 19.5 fp32;
on a CPU, threads x 2.5 GHz x 32 FLOP/cycle (two AVX2 FMA units on 8 fp32 lanes) - a rough
figure; set peak_tflops for a measured one. An unknown GPU without peak_tflops reports MFU as null.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import torch

from model.config import RenderConfig
from pipeline import atomic

log = logging.getLogger(__name__)

# (bf16, tf32, fp32) dense TFLOP/s per GPU, matched against torch.cuda.get_device_name().
GPU_PEAK_TFLOPS = {
    "H200": (989.4, 494.7, 66.9),
    "H100": (989.4, 494.7, 66.9),
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.1, 183.0, 91.6),
    "A10": (125.0, 62.5, 31.2),
    "V100": (125.0, 15.7, 15.7),  # V100 has no bf16/tf32: fp16 tensor cores for the first entry
}
CPU_HZ, CPU_FLOP_PER_CYCLE = 2.5e9, 32


def patch_train_flops(cfg: RenderConfig, context_tokens: int) -> float:
    """Training model FLOPs of one patch step for one item (formula in the module docstring)."""
    d, L, r, v, t = cfg.d_model, cfg.n_layer, cfg.mlp_ratio, cfg.vocab_size, cfg.tokens_per_patch
    tq = t + 1 if cfg.renderer == "ar" else t
    s = context_tokens
    lt = cfg.text_len + 1 if cfg.has_text else 0

    def own(q: int, ctx: int) -> float:
        f = 8 * d * d * q + 4 * r * d * d * q + 4 * q * (ctx + q) * d
        if cfg.has_text:
            f += 4 * d * d * q + 4 * d * d * lt + 4 * q * lt * d
        return f

    f_ctx = 4 * d * d * s
    f_head = 2 * d * v * t
    f_text = cfg.text_layers * (8 * d * d * lt + 4 * r * d * d * lt + 4 * lt * lt * d) if cfg.has_text else 0
    f_fwd = L * (own(tq, s) + f_ctx) + f_head + f_text
    total = 3 * f_fwd - L * f_ctx
    if cfg.renderer != "ar" or not cfg.context_transfer:
        s2 = s if cfg.context_transfer else 0
        total += L * (own(t, s2) + 4 * d * d * s2)
    return float(total)


def peak_flops(device: torch.device, bf16: bool, override_tflops: float | None) -> tuple[float | None, str]:
    """Peak FLOP/s of one rank's device and where the figure comes from."""
    if override_tflops:
        return override_tflops * 1e12, "train.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (b16, tf32, fp32) in GPU_PEAK_TFLOPS.items():
            if key in name:
                if bf16:
                    return b16 * 1e12, f"{name} bf16 dense"
                if torch.backends.cuda.matmul.allow_tf32:
                    return tf32 * 1e12, f"{name} tf32 dense"
                return fp32 * 1e12, f"{name} fp32"
        return None, f"unknown GPU {name!r} (set train.peak_tflops)"
    threads = torch.get_num_threads()
    return threads * CPU_HZ * CPU_FLOP_PER_CYCLE, f"cpu {threads} threads x 2.5 GHz x 32 FLOP/cycle (rough)"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated accelerator memory, or on a CPU the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class TrainMonitor:
    def __init__(self, enabled: bool, tb_dir: Path, metrics_path: Path, total_steps: int, start_step: int,
                 log_every: int, peak: float | None, world: int):
        self.enabled = enabled
        self.metrics_path = metrics_path
        self.log_every = max(1, log_every)
        self.peak, self.world = peak, world
        self.writer = self.bar = None
        self._last_logged = start_step
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.writer = SummaryWriter(log_dir=str(tb_dir))
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=None,
                        desc="render-and-optimize")
        self._truncate_metrics(start_step)

    def _truncate_metrics(self, start_step: int) -> None:
        """Drop records past the resume point (steps a crashed run took after its last checkpoint) and a
        last line torn by a kill in the middle of its write."""
        if not self.metrics_path.is_file():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", start_step + 1) <= start_step:
                keep.append(line)
        atomic.write_text(self.metrics_path, "".join(line + "\n" for line in keep))

    def batch(self, record: dict, step_losses: list[float], step_lrs: list[float],
              step_grad_norms: list[float | None], context_flops: float, device: torch.device) -> dict:
        """Record one finished batch. `record` holds step (after the batch), epoch, batch, direction,
        items (global), tokens (global), seconds. Returns the record with throughput figures added."""
        if not self.enabled:
            return record
        secs = max(record["seconds"], 1e-9)
        record = dict(record)
        record["loss"] = sum(record["patch_losses"]) / len(record["patch_losses"])
        record["tokens_per_s"] = record["tokens"] / secs
        record["samples_per_s"] = record["items"] / secs
        record["seconds_per_step"] = secs / max(1, len(step_losses))
        record["mfu"] = (context_flops / secs / (self.peak * self.world)) if self.peak else None
        record["peak_memory_bytes"] = peak_memory_bytes(device)
        record["lr"] = step_lrs[-1] if step_lrs else None
        w, end = self.writer, record["step"]
        first = end - len(step_losses) + 1
        for i, (loss, lr, gn) in enumerate(zip(step_losses, step_lrs, step_grad_norms)):
            w.add_scalar("train/loss", loss, first + i)
            w.add_scalar("train/lr", lr, first + i)
            if gn is not None:
                w.add_scalar("train/grad_norm", gn, first + i)
        w.add_scalar("train/loss_batch", record["loss"], end)
        for n, loss in enumerate(record["patch_losses"]):
            w.add_scalar(f"loss_by_patch/{n:03d}", loss, end)
        for key in ("tokens_per_s", "samples_per_s", "seconds_per_step"):
            w.add_scalar(f"perf/{key}", record[key], end)
        if record["mfu"] is not None:
            w.add_scalar("perf/mfu", record["mfu"], end)
        w.add_scalar("perf/peak_memory_gib", record["peak_memory_bytes"] / 2**30, end)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.bar.update(len(step_losses))
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if end - self._last_logged >= self.log_every:
            self._last_logged = end
            mfu = f"{100 * record['mfu']:.2f}%" if record["mfu"] is not None else "n/a"
            log.info("step %d (epoch %d batch %d, %s): loss %.4f lr %.3e | %.0f tokens/s %.2f samples/s "
                     "%.3f s/step MFU %s peak mem %.2f GiB", end, record["epoch"], record["batch"],
                     record["direction"], record["loss"], record["lr"], record["tokens_per_s"],
                     record["samples_per_s"], record["seconds_per_step"], mfu,
                     record["peak_memory_bytes"] / 2**30)
        return record

    def image(self, tag: str, image_chw: torch.Tensor, step: int) -> None:
        if self.enabled:
            self.writer.add_image(tag, image_chw, step)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.writer.flush()
            self.writer.close()


class Stopwatch:
    def __init__(self, device: torch.device):
        self.device = device
        self.t0 = 0.0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self.t0


class PhaseClock(Stopwatch):
    """Where a patch step's time goes (pipeline.bench train): wall seconds per phase of `train_batch`.

    Synchronises the device at every phase boundary, so that each phase is charged with its own device
    work; a training run passes no clock and so never synchronises inside a batch."""

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.phases: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        dt = self.seconds()
        self.phases[phase] = self.phases.get(phase, 0.0) + dt
        self.t0 += dt


class VQGANPreview:
    """Decodes code grids to images for tensorboard (rank 0), with the run's VQGAN (section `vqgan`).

    Shows the first frame of the first item of a batch: the real codes on the left, the renderer's
    teacher-forced argmax prediction of every patch on the right (what each patch step predicted
    given the true tokens before it and its context) - a cheap view of what the model has learned
    that needs no extra forward pass and is safe under ZeRO-3.
    """

    def __init__(self, run_cfg, device: torch.device):
        self.run_cfg, self.device = run_cfg, device
        self.model = None

    @classmethod
    def available(cls, run_cfg) -> tuple[bool, str]:
        if not run_cfg.has("vqgan"):
            return False, "no `vqgan` section"
        try:
            from pipeline.formats import vqgan_io
        except ImportError as e:
            return False, f"pipeline.formats.vqgan_io unavailable ({e})"
        try:
            path = vqgan_io.weights_path(run_cfg, required=False)
        except Exception as e:  # a config problem of the vqgan section: report, do not stop training
            return False, str(e)
        if path is None or not Path(path).is_file():
            return False, f"VQGAN weights {path} not found"
        return True, str(path)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [f, h, w] -> image [3, H, W] in [0, 1] (first frame)."""
        if self.model is None:
            from pipeline.formats import vqgan_io

            self.model, _, _ = vqgan_io.load_vqgan(self.run_cfg, self.device)
        img = self.model.decode_codes(codes[:1].to(self.device).long())[0]
        return ((img.float().clamp(-1, 1) + 1) / 2).cpu()

    def side_by_side(self, truth: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.decode(truth), self.decode(prediction)], dim=2)
