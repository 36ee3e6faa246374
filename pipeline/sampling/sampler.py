"""The loaded models of stage 70 and how one picture is rendered to disk (`Sampler.image`).

`Sampler` holds the renderer (from the trainer's export), its caption tokenizer and the VQGAN, on
the device the `sample` section names; `image` generates a batch of code grids with the context
pool (pipeline.sampling.generate), decodes them in overlapping windows as they stream out
(pipeline.sampling.stream_decode) and writes the PNGs (and codes). Used by every job of
pipeline.sampling.sample.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.config import SamplingConfig
from model.directions import Direction, Grid
from pipeline import atomic
from pipeline.config import ConfigError, RunConfig
from pipeline.formats.vqgan_io import load_vqgan
from pipeline.ranks import pick_device, rank_info
from pipeline.sampling.generate import CodeFileWriter, GivenCodes, MemoryLedger, Tee, generate, slab_axis
from pipeline.sampling.stream_decode import Canvases, ImageStreamDecoder, write_png


class Sampler:
    """The loaded models and shared settings; renders one job item after another."""

    def __init__(self, cfg: RunConfig, sec, export: str | None = None):
        """`sec`: the run's `sample` section (pipeline.sampling.sample.SampleSection)."""
        from pipeline.formats.renderer_io import WEIGHTS, export_dir, load_renderer

        self.cfg, self.sec = cfg, sec
        self.device = pick_device(sec.device, rank_info().local_rank, f"{cfg.path}: sample.device")
        export = export or sec.export_dir
        folder = cfg.resolve(export) if export else export_dir(cfg)
        self.renderer, self.tokenizer = load_renderer(folder, self.device)
        self.vqgan, vq_sha, vq_path = load_vqgan(cfg, self.device)
        rc = self.renderer.cfg
        if self.vqgan.config.n_embed != rc.vocab_size:
            raise ConfigError(f"{cfg.path}: the VQGAN has {self.vqgan.config.n_embed} codes but the renderer "
                              f"in {folder} was trained on {rc.vocab_size}")
        self.models = {"renderer": {"export_dir": str(folder), "weights": str(folder / WEIGHTS),
                                    "sha256": atomic.sha256_file(folder / WEIGHTS), "kind": rc.renderer,
                                    "patch": list(rc.patch), "expand": list(rc.expand)},
                       "vqgan": {"path": str(vq_path), "sha256": vq_sha, "downsample": self.vqgan.downsample}}
        self.f = self.vqgan.downsample

    def captions(self, prompts: list[str | None], where: str):
        if all(p is None for p in prompts):
            return None, None
        if self.tokenizer is None:
            raise ConfigError(f"{where}: the renderer has no text encoder, so it cannot take a prompt")
        return self.tokenizer.encode([p or "" for p in prompts], self.renderer.cfg.text_len)

    def grid_of(self, job, where: str) -> Grid:
        """The patch grid of a job's `size` (pixels) or `patches`."""
        hp, wp, _ = self.renderer.cfg.patch
        if job.patches is not None:
            return Grid(*job.patches)
        h, w = job.size
        if h % (hp * self.f) or w % (wp * self.f):
            raise ConfigError(f"{where}: size {h} x {w} is not whole patches of {hp * self.f} x {wp * self.f} "
                              f"pixels (patch {hp} x {wp} codes, VQGAN factor {self.f})")
        return Grid(h // (hp * self.f), w // (wp * self.f))

    def image(self, grid: Grid, direction: Direction, stems: list[Path], prompts: list[str | None],
              sampling: SamplingConfig, seed: int, where: str, given: GivenCodes | None = None) -> dict:
        """Generate len(stems) images of `grid` together and write <stem>.png (+ .codes.npy)."""
        hp, wp, _ = self.renderer.cfg.patch
        code_hw = (grid.H * hp, grid.W * wp)
        axis = slab_axis(direction, grid)
        chunk = self.renderer.cfg.patch[axis]
        margin = chunk if self.sec.decode_margin is None else self.sec.decode_margin
        ids, mask = self.captions(prompts, where)
        ledger = MemoryLedger()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        shape = (code_hw[0] * self.f, code_hw[1] * self.f, 3)
        with Canvases(stems[0].parent, [shape] * len(stems)) as canvases:
            decoder = ImageStreamDecoder(self.vqgan, code_hw, canvases.arrays, axis, chunk, margin, ledger)
            writer = None
            if self.sec.save_codes:
                writer = CodeFileWriter([beside(s, ".codes.npy") for s in stems], (1, *code_hw),
                                        self.renderer.cfg.vocab_size)
            stats = generate(self.renderer, grid, direction, Tee(*[c for c in (decoder, writer) if c]),
                             text_ids=ids, text_mask=mask, batch=len(stems), sampling=sampling, generator=gen,
                             given=given, ledger=ledger, progress=self.sec.progress, desc=f"{stems[0].name} patches")
            decoder.finish()
            if writer is not None:
                writer.finish()
            for canvas, stem in zip(canvases.arrays, stems):
                write_png(beside(stem, ".png"), canvas)
        return {**stats.to_dict(), "decode": {"chunk": chunk, "margin": margin}}


def beside(stem: Path, ext: str) -> Path:
    """`stem` + `ext`. Not Path.with_suffix, which would cut a name such as "wide-0.8" at its dot
    and let two jobs write the same file."""
    return stem.with_name(stem.name + ext)
