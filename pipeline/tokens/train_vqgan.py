"""Stage 40: train (or fine-tune) the VQGAN on the image manifest (or on crops of a single large image).

    python -m pipeline.tokens.train_vqgan --config run.yaml          # one process
    torchrun --nproc_per_node N -m pipeline.tokens.train_vqgan ...   # data parallel (gloo on CPU, nccl on GPU)

Config section `train_vqgan` (see TrainVQGANSection); the architecture and an optional starting point
come from the `vqgan` section (pipeline.formats.vqgan_io). Output under run_dir/vqgan/: checkpoints/step-*.pt
(atomic; the newest is resumed automatically), tb/ (tensorboard: losses, codebook usage, input vs.
reconstruction images), and at the end vqgan.safetensors + vqgan.json, which stages 50-80 load.

Loss = recon_weight * L1|L2 + perceptual_weight * LPIPS (only with user-supplied weights)
     + codebook_weight * (||sg(z) - zq||^2 + commit_beta * ||z - sg(zq)||^2)
     + disc_weight * hinge generator loss (from step disc_start on; off when disc_start < 0).
Codebook use: every `restart_every` steps the codes that no rank picked in that window are restarted
from encoder outputs of the current batch (and on the very first step of a from-scratch run, which
amounts to initialising the codebook from data). Rank 0 chooses, then broadcasts the codebook; Adam's
moments of restarted codes are zeroed on every rank so that the ranks stay identical. For fine-tuning a
pretrained 16384-code model set `restart_every: 0` or a window long enough to see every code in use.

The data order is a pure function of (seed, step): step s takes the s-th global batch of an endless
sequence of seeded permutations, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from model.vqgan import VQGAN
from pipeline import atomic
from pipeline.config import ConfigError, load_config
from pipeline.errors import entry_point
from pipeline.formats import manifest, vqgan_io
from pipeline.ranks import pick_device, rank_info
from pipeline.tokens.vqgan_losses import (
    LPIPS,
    PatchDiscriminator,
    generator_adv_loss,
    hinge_d_loss,
    reconstruction_loss,
)

log = logging.getLogger("train_vqgan")


@dataclass
class TrainVQGANSection:
    manifest: str = manifest.IMAGE_MANIFEST  # relative to run_dir unless absolute
    splits: tuple[str, ...] = ("train",)  # manifest splits to train on; an empty split counts as "train"
    size: int = 256  # manifest crops are resized to size x size
    random_crop: int | None = None  # train on random windows of this side inside them (None = whole image)
    # Single-image runs: random crops of random_crop pixels from the training boxes of stage 12's
    # single-image manifest (pipeline.tokens.single_image) instead of the image manifest's crops.
    single_image: bool = False
    flip: bool = True  # random horizontal flips
    batch_size: int = 8  # per rank
    steps: int = 20000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    grad_clip: float = 1.0  # 0 = off
    recon_loss: Literal["l1", "l2"] = "l1"
    recon_weight: float = 1.0
    codebook_weight: float = 1.0
    commit_beta: float = 0.25
    restart_every: int = 100  # 0 = no dead-code restarts
    perceptual_weight: float = 1.0
    lpips_vgg: str | None = None  # torchvision vgg16 state dict
    lpips_lin: str | None = None  # LPIPS linear layers (vgg.pth)
    disc_start: int = -1  # first step with the discriminator; < 0 = no discriminator
    disc_weight: float = 0.1
    disc_lr: float | None = None  # None = lr
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 0
    log_every: int = 10
    image_every: int = 100
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = True

    def __post_init__(self):
        if self.size < 8 or self.batch_size < 1 or self.steps < 0:
            raise ValueError("size >= 8, batch_size >= 1 and steps >= 0 are required")
        if (self.lpips_vgg is None) != (self.lpips_lin is None):
            raise ValueError("lpips_vgg and lpips_lin go together (both paths, or neither)")
        if self.random_crop is not None and not 8 <= self.random_crop <= self.size:
            raise ValueError(f"random_crop must be between 8 and size ({self.size}), got {self.random_crop}")
        if self.single_image and self.random_crop is None:
            raise ValueError("single_image needs random_crop (the side of the crops taken from the image)")
        if min(self.log_every, self.image_every, self.ckpt_every, self.keep_checkpoints) < 1:
            raise ValueError("log_every, image_every, ckpt_every and keep_checkpoints must be >= 1")


class CropDataset(torch.utils.data.Dataset):
    """Manifest rows -> image tensors [3, size, size] in [-1, 1]; flips are a function of (seed, key)."""

    def __init__(self, rows: list[dict], size: int, flip: bool, seed: int, window: int | None = None):
        self.rows, self.size, self.flip, self.seed, self.window = rows, size, flip, seed, window

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, draw = key  # draw: position in the endless sample sequence (decides the flip)
        row = self.rows[index]
        pixels = manifest.load_image_crop(row["path"], row["crop"], self.size)
        x = torch.from_numpy(pixels).permute(2, 0, 1).float().div(127.5).sub(1.0)
        rng = random.Random(self.seed * 1_000_003 + draw)
        if self.window and self.window < self.size:
            top, left = rng.randrange(self.size - self.window + 1), rng.randrange(self.size - self.window + 1)
            x = x[:, top:top + self.window, left:left + self.window]
        if self.flip and rng.random() < 0.5:
            x = x.flip(-1)
        return x


class StepBatches(torch.utils.data.Sampler):
    """Endless per-rank batches from step `start` on: global batch s = draws [s*G, (s+1)*G) of the
    concatenated seeded permutations (G = batch * world), rank r takes its contiguous slice."""

    def __init__(self, n: int, batch: int, rank: int, world: int, seed: int, start: int):
        self.n, self.batch, self.rank, self.world, self.seed, self.start = n, batch, rank, world, seed, start
        self._cached: tuple[int, np.ndarray] | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return self._cached[1]

    def __iter__(self):
        step = self.start
        while True:
            first = (step * self.world + self.rank) * self.batch
            out = []
            for draw in range(first, first + self.batch):
                epoch, pos = divmod(draw, self.n)
                out.append((int(self._perm(epoch)[pos]), draw))
            yield out
            step += 1


def training_rows(path: Path, splits: tuple[str, ...]) -> list[dict]:
    rows = manifest.read_rows(path, ("id", "path", "crop"))
    want = set(splits)
    keep = [r for r in rows if (r.get("split") or "train") in want]
    if not keep:
        raise ConfigError(f"{path}: no rows in splits {sorted(want)} ({len(rows)} rows in the manifest)")
    return keep


def list_checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("step-*.pt"))


def save_checkpoint(folder: Path, step: int, state: dict, keep: int) -> Path:
    path = folder / f"step-{step:08d}.pt"
    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _mean_over_ranks(values: dict[str, float], device: torch.device, world: int) -> dict[str, float]:
    if world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / world).tolist()))


def _image_grid(x: torch.Tensor, recon: torch.Tensor, n: int = 4) -> torch.Tensor:
    from torchvision.utils import make_grid

    pair = torch.cat([x[:n], recon[:n]]).detach().float().cpu().clamp(-1, 1).add(1).div(2)
    return make_grid(pair, nrow=min(n, x.shape[0]))


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    sec = cfg.section("train_vqgan", TrainVQGANSection)
    vq_sec = vqgan_io.read_section(cfg)
    arch = vqgan_io.architecture(cfg, vq_sec)
    for name in ("size", "random_crop"):
        side = getattr(sec, name)
        if side is not None and side % arch.downsample:
            raise ConfigError(f"{cfg.path}: train_vqgan.{name} {side} is not a multiple of the VQGAN's "
                              f"down-sampling factor {arch.downsample}")
    ranks = rank_info()
    if not ranks.is_main:  # one rank tells the story; the others speak up only for problems
        logging.getLogger().setLevel(logging.WARNING)
    device = pick_device(sec.device, ranks.local_rank, "train_vqgan.device")
    if ranks.world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(cfg, sec, vq_sec, arch, ranks, device)
    finally:
        if ranks.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg, sec: TrainVQGANSection, vq_sec, arch, ranks, device: torch.device) -> int:
    out_dir = cfg.run_dir / "vqgan"
    ckpt_dir = out_dir / "checkpoints"
    world, main_rank = ranks.world_size, ranks.is_main
    seed = cfg.seed
    torch.manual_seed(seed)
    model = VQGAN(arch).set_arithmetic(vq_sec.arithmetic)
    start_weights = cfg.resolve(vq_sec.weights) if vq_sec.weights else None
    if start_weights is not None:
        vqgan_io.load_weights(model, start_weights, vq_sec.allow_unsafe_pickle)
        log.info("fine-tuning from %s", start_weights)
    model.to(device).train()
    use_disc = sec.disc_start >= 0 and sec.disc_weight > 0
    disc = PatchDiscriminator().to(device) if use_disc else None
    opt = torch.optim.Adam(model.parameters(), lr=sec.lr, betas=sec.betas)
    d_opt = torch.optim.Adam(disc.parameters(), lr=sec.disc_lr or sec.lr, betas=sec.betas) if disc else None
    lpips = None
    if sec.lpips_vgg and sec.perceptual_weight > 0:
        lpips = LPIPS.from_files(cfg.resolve(sec.lpips_vgg), cfg.resolve(sec.lpips_lin)).to(device)
        log.info("perceptual loss: on (LPIPS-vgg, weight %g)", sec.perceptual_weight)
    else:
        log.info("perceptual loss: OFF (train_vqgan.lpips_vgg / lpips_lin not configured; no weights can be "
                 "downloaded, so supply a torchvision vgg16 state dict and LPIPS vgg.pth to enable it)")
    log.info("discriminator: %s", f"from step {sec.disc_start}, weight {sec.disc_weight}" if disc else "off")

    counts = torch.zeros(arch.n_embed, dtype=torch.float64, device=device)
    start = 0
    existing = list_checkpoints(ckpt_dir) if sec.resume else []
    if existing:
        state = torch.load(existing[-1], map_location="cpu", weights_only=True)
        if state.get("arch") != arch.to_dict():
            raise ConfigError(f"{existing[-1]}: checkpoint was made for VQGAN {state.get('arch')}, the config "
                              f"asks for {arch.to_dict()}; use another run_dir or delete {ckpt_dir}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if disc is not None and "disc" in state:
            disc.load_state_dict(state["disc"])
            d_opt.load_state_dict(state["d_opt"])
        counts = state["counts"].to(device)
        start = int(state["step"])
        log.info("resumed from %s (step %d)", existing[-1], start)

    if start >= sec.steps and vqgan_io.export_path(cfg).is_file():
        # Finished earlier: the export already holds these weights; rewriting it would only change
        # its metadata (and its sha256, which every token shard records).
        if main_rank:
            log.info("train_vqgan: already trained (%d of %d steps); keeping %s", start, sec.steps,
                     vqgan_io.export_path(cfg))
        return 0

    net = model
    d_net = disc
    if world > 1:
        ddp_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_ids)
        if disc is not None:
            d_net = torch.nn.parallel.DistributedDataParallel(disc, device_ids=ddp_ids)

    if sec.single_image:
        from pipeline.tokens.single_image import SingleImageCrops, read_rows

        rows = read_rows(cfg.run_dir / manifest.SINGLE_IMAGE_MANIFEST)
        dataset = SingleImageCrops(rows, sec.random_crop, sec.flip, seed)
    else:
        rows = training_rows(cfg.run_dir / sec.manifest if not Path(sec.manifest).is_absolute()
                             else Path(sec.manifest), sec.splits)
        dataset = CropDataset(rows, sec.size, sec.flip, seed, sec.random_crop)
    data = torch.utils.data.DataLoader(
        dataset, num_workers=sec.num_workers,
        batch_sampler=StepBatches(len(rows), sec.batch_size, ranks.rank, world, seed, start))
    writer = None
    if main_rank:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))
    side = sec.random_crop if sec.single_image else sec.size
    log.info("training %d -> %d steps on %d %simages at %dx%d, %d rank(s) x batch %d, device %s", start, sec.steps,
             len(rows), "crops of single " if sec.single_image else "", side, side, world, sec.batch_size, device)

    from tqdm import tqdm

    bar = tqdm(total=sec.steps, initial=start, desc="train_vqgan", disable=not main_rank, dynamic_ncols=True)
    last: dict[str, float] = {}
    batches = iter(data)
    for step in range(start, sec.steps):
        x = next(batches).to(device, non_blocking=True)
        out = net(x)
        rec = reconstruction_loss(out.recon, x, sec.recon_loss)
        vq = out.codebook_loss + sec.commit_beta * out.commit_loss
        loss = sec.recon_weight * rec + sec.codebook_weight * vq
        terms = {"loss/recon": rec.item(), "loss/codebook": out.codebook_loss.item(),
                 "loss/commit": out.commit_loss.item()}
        if lpips is not None:
            p = lpips(out.recon, x).mean()
            loss = loss + sec.perceptual_weight * p
            terms["loss/perceptual"] = p.item()
        disc_on = disc is not None and step >= sec.disc_start
        if disc_on:
            disc.requires_grad_(False)  # the generator's step must not touch the discriminator
            g_adv = generator_adv_loss(disc(out.recon))
            disc.requires_grad_(True)
            loss = loss + sec.disc_weight * g_adv
            terms["loss/gen_adv"] = g_adv.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if sec.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), sec.grad_clip)
        opt.step()
        if disc_on:
            d_loss = hinge_d_loss(d_net(x), d_net(out.recon.detach()))
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            terms["loss/disc"] = d_loss.item()
        terms["loss/total"] = loss.item()

        counts += torch.bincount(out.codes.flatten(), minlength=arch.n_embed).to(counts)
        # Usage window: the restart period, or the image period when restarts are off.
        window = sec.restart_every if sec.restart_every > 0 else sec.image_every
        first_step_init = sec.restart_every > 0 and step == 0 and start_weights is None
        if first_step_init or (step + 1) % window == 0:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)  # a function of the step: resumable
            usage = _codebook_window(model, opt, counts, out.latents.detach(), gen, world, main_rank,
                                     restart=sec.restart_every > 0)
            counts.zero_()
            if main_rank:
                for k, v in usage.items():
                    writer.add_scalar(k, v, step)

        if (step + 1) % sec.log_every == 0 or step + 1 == sec.steps:
            last = _mean_over_ranks({k: v for k, v in terms.items() if k.startswith("loss/")}, device, world)
            if main_rank:
                for k, v in last.items():
                    writer.add_scalar(k, v, step)
                bar.set_postfix(recon=f"{last['loss/recon']:.4f}", vq=f"{last['loss/codebook']:.4f}")
        if main_rank and ((step + 1) % sec.image_every == 0 or step + 1 == sec.steps):
            writer.add_image("reconstruction/top_input_bottom_output", _image_grid(x, out.recon), step)
        if main_rank and ((step + 1) % sec.ckpt_every == 0 or step + 1 == sec.steps):
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                     "counts": counts.cpu(), "arch": arch.to_dict()}
            if disc is not None:
                state.update(disc=disc.state_dict(), d_opt=d_opt.state_dict())
            save_checkpoint(ckpt_dir, step + 1, state, sec.keep_checkpoints)
        bar.update(1)
    bar.close()

    if main_rank:
        extra = {"steps": sec.steps, "train_size": sec.size, "final_losses": last,
                 "section": dataclasses.asdict(sec)}
        if start_weights is not None:  # later stages load this export, not the starting point (vqgan_io)
            extra["fine_tuned_from"] = {"path": str(start_weights), "sha256": atomic.sha256_file(start_weights)}
        sha = vqgan_io.save_vqgan(model, vqgan_io.export_path(cfg), extra=extra)
        writer.close()
        summary = ", ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in last.items())
        log.info("train_vqgan: %d steps done (%s); wrote %s (sha256 %s)", sec.steps, summary or "no new steps",
                 vqgan_io.export_path(cfg), sha[:12])
    if world > 1:
        dist.barrier()
    return 0


@torch.no_grad()
def _codebook_window(model: VQGAN, opt: torch.optim.Optimizer, counts: torch.Tensor, latents: torch.Tensor,
                     gen: torch.Generator, world: int, main_rank: bool, restart: bool) -> dict[str, float]:
    """Usage figures of the window just ended; with `restart`, codes no rank used in it are restarted."""
    total = counts.clone()
    if world > 1:
        dist.all_reduce(total)
    used = total > 0
    p = total / total.sum().clamp_min(1)
    perplexity = float(torch.exp(-(p[used] * p[used].log()).sum()))
    dead = ~used
    weight = model.quantize.embedding.weight
    restarted = 0
    if restart and dead.any():
        if main_rank:
            candidates = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).float().cpu()
            model.quantize.restart_codes(dead.cpu(), candidates, gen)
        if world > 1:
            dist.broadcast(weight.data, src=0)
        restarted = int(dead.sum())
        for key in ("exp_avg", "exp_avg_sq"):
            st = opt.state.get(weight, {})
            if key in st:
                st[key][dead.to(st[key].device)] = 0.0
    return {"codebook/used_fraction": float(used.float().mean()), "codebook/perplexity": perplexity,
            "codebook/restarted": float(restarted)}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
