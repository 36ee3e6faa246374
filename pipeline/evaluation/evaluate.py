"""Stage 80: the paper's metrics (Block-FID, Inception Score, CLIP-SIM, FVD) for generated samples.

Reads the `evaluate` section of the run config, computes each metric named in
`evaluate.metrics` over the generated folder (PNG images with the sampler's `<name>.json`
prompt sidecars, MP4 videos) against a real reference set, and writes
`run_dir/eval/<output_name>` (default metrics.json) atomically:

    {"metrics": {"block_fid": {"value": ..., ...}, ...},
     "skipped": {"clip_sim": "no CLIP model configured: set evaluate.clip_model"},
     "weights": {"inception": {"path": ..., "sha256": ...}, ...},
     "bad_inputs": [{"path": ..., "reason": ...}], "config": {...}, "seconds": ...}

The section (paths relative to the config file; defaults in EvaluateConfig):

    evaluate:
      metrics: [block_fid, inception_score, clip_sim, fvd]
      generated: runs/x/samples/panorama     # default run_dir/samples (searched recursively)
      reference: runs/x/data/images/manifest.parquet   # or a folder of images
      reference_split: test                  # manifest rows used ("" = all)
      reference_videos: runs/x/data/videos/kept.parquet   # or a folder of MP4s
      inception_weights: weights/pt_inception-2015-12-05-6726825d.pth
      clip_model: weights/clip-vit-base-patch32      # a transformers directory
      i3d_weights: weights/rgb_imagenet.pt
      block_size: 256
      block_stride: 128
      generated_region: null                 # [x0, y0, x1, y1]: evaluate only this box of each sample
      reference_region: null                 # the same for the real images
      fid_method: sqrtm                      # or eigen: the same value, much faster on a CPU

A metric whose weights, inputs or reference are not configured or not there is listed under
"skipped" with the reason, in the JSON and the log; the stage does not fail for it. A weights
path that is configured but does not exist is a configuration error (a typo must not pass as
a skipped metric). Unreadable samples are listed under "bad_inputs" and left out.

Adding a metric: write `def metric_x(ctx: EvalContext) -> dict` returning at least {"value":
float} (raise MetricSkipped(reason) when it cannot run), register it in METRICS, and add any config key it needs to
EvaluateConfig; `evaluate()` runs every name in `evaluate.metrics` through METRICS.

Choices the paper leaves open (besides those in pipeline/evaluation/metrics/*):
* Block-FID compares all blocks of all generated images with all blocks of the reference
  images (both cut with the same block size and stride) through the 2048-d Inception pool
  features; the reference is the test split of an image manifest by default.
* "Move half of the block size" (paper 4.1) has two readings. The default here, "overlap": blocks
  are taken at a stride of half a block (block_stride = block_size / 2), so half of them straddle
  the rendering windows' seams. The other, "shifted": the model makes images one block larger,
  `generated_region` trims half a block off every side, and the blocks do not overlap
  (block_stride = block_size), so every block straddles the seams. The protocol
  (pipeline/evaluation/protocol.py, `table1.block_fid`) sets either up; here they are only the keys.
* `generated_region` / `reference_region` restrict every image metric to one box of each image
  (Table 3: the extended half of each sample against the same half of the real images; the given
  half never enters the statistics).
* IS is computed on whole generated images resized to the Inception input (`is_on: images`,
  as torch-fidelity does), or on the Block-FID blocks (`is_on: blocks`).
* FVD uses the first `fvd_frames` frames of each video; a video with fewer frames is left out and
  listed under bad_inputs (clips of different lengths are never compared).
* Only rank 0 evaluates; under a distributed launcher the other ranks exit at once.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pipeline import atomic
from pipeline.config import ConfigError, RunConfig, load_config, to_dict
from pipeline.errors import entry_point
from pipeline.evaluation.metrics import extract, reference
from pipeline.evaluation.metrics.fid import frechet_distance
from pipeline.evaluation.metrics.inception_score import inception_score_from_logits
from pipeline.evaluation.metrics.media import (
    ImageItem,
    MediaError,
    VideoItem,
    folder_images,
    folder_videos,
    manifest_items,
    read_all,
    read_prompt,
    with_region,
)
from pipeline.ranks import pick_device, rank_info

log = logging.getLogger("pipeline.evaluation.evaluate")

DEFAULT_METRICS = ("bits_per_token", "block_fid", "inception_score", "clip_sim", "fvd")


@dataclass
class EvaluateConfig:
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    generated: str | None = None          # folder of samples; default run_dir/samples
    reference: str | None = None          # real images: a folder, or a Parquet image manifest
    reference_videos: str | None = None   # real videos: a folder of MP4s, or a Parquet clip manifest
    reference_split: str = "test"         # manifest rows used ("" = all rows)
    inception_weights: str | None = None  # pt_inception-2015-12-05-6726825d.pth or inception_v3_google-*.pth
    clip_model: str | None = None         # transformers directory with a CLIPModel + CLIPProcessor
    i3d_weights: str | None = None        # pytorch-i3d rgb_imagenet.pt
    block_size: int = 256
    block_stride: int = 128
    generated_region: tuple[int, int, int, int] | None = None  # [x0, y0, x1, y1] of each generated image
    reference_region: tuple[int, int, int, int] | None = None  # the same box of each real image
    inception_size: int = 299
    fid_method: Literal["sqrtm", "eigen"] = "sqrtm"  # metrics/fid.py: same value, eigen faster
    is_splits: int = 10
    is_on: Literal["images", "blocks"] = "images"
    fvd_frames: int = 16
    fvd_size: int = 224
    batch_size: int = 32
    video_batch_size: int = 2
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    output_name: str = "metrics.json"
    # bits_per_token: teacher-forced validation loss of the trained renderer on held-out codes
    renderer_export: str | None = None    # default run_dir/train/export
    validation_tokens: str | None = None  # default run_dir/tokens/images/test (single image: the canvases)
    validation_direction: str = "down-right-forward"
    validation_batch_size: int = 16
    copy_canvases: str | None = None      # copy_share: the canvases (default run_dir/tokens/single_image)

    def __post_init__(self):
        for name in ("block_size", "block_stride", "inception_size", "is_splits", "fvd_frames", "fvd_size",
                     "batch_size", "video_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.inception_size < 75:
            raise ValueError(f"inception_size must be >= 75 (Inception-v3's smallest input), "
                             f"got {self.inception_size}")
        for name in ("generated_region", "reference_region"):
            box = getattr(self, name)
            if box is not None and not (0 <= box[0] < box[2] and 0 <= box[1] < box[3]):
                raise ValueError(f"{name} must be [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1, got {list(box)}")
        if "/" in self.output_name or not self.output_name.endswith(".json"):
            raise ValueError(f"output_name must be a plain file name ending in .json, got {self.output_name!r}")


class MetricSkipped(Exception):
    """A metric that cannot run with this configuration; the message is the reason."""


@dataclass
class EvalContext:
    """What metric functions share: config, paths, device, and models loaded once."""

    run_cfg: RunConfig
    cfg: EvaluateConfig
    device: torch.device
    generated_dir: Path
    cache_dir: Path
    weights: dict[str, dict] = field(default_factory=dict)
    bad_inputs: list[dict] = field(default_factory=list)
    _memo: dict[str, Any] = field(default_factory=dict)

    def path_of(self, key: str) -> Path | None:
        value = getattr(self.cfg, key)
        return self.run_cfg.resolve(value) if value else None

    def record_weights(self, name: str, path: Path) -> str:
        """sha256 of a weight file, recorded under `name` for the result JSON (hashed once)."""
        if name not in self.weights:
            self.weights[name] = {"path": str(path), "sha256": atomic.sha256_file(path)}
        return self.weights[name]["sha256"]

    def memo(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._memo:
            self._memo[name] = make()
        return self._memo[name]

    # -- shared inputs -------------------------------------------------------------------------
    def generated_images(self) -> list[ImageItem]:
        items = folder_images(self.generated_dir, (".png",)) if self.generated_dir.is_dir() else []
        if not items:
            raise MetricSkipped(f"no generated PNG images in {self.generated_dir}")
        return with_region(items, self.cfg.generated_region)

    def generated_videos(self) -> list[VideoItem]:
        items = folder_videos(self.generated_dir) if self.generated_dir.is_dir() else []
        if not items:
            raise MetricSkipped(f"no generated videos (MP4) in {self.generated_dir}")
        return items

    def reference_images(self) -> list[ImageItem]:
        path = self.path_of("reference")
        if path is None:
            raise MetricSkipped("no reference set configured: set evaluate.reference")
        items = manifest_items(path, self.cfg.reference_split)[0] if path.is_file() else folder_images(path)
        if not items:
            raise MetricSkipped(f"no reference images in {path}" + self._split_note(path))
        return with_region(items, self.cfg.reference_region)

    def reference_videos(self) -> list[VideoItem]:
        path = self.path_of("reference_videos")
        if path is None:
            raise MetricSkipped("no reference videos configured: set evaluate.reference_videos")
        items = manifest_items(path, self.cfg.reference_split)[1] if path.is_file() else folder_videos(path)
        if not items:
            raise MetricSkipped(f"no reference videos in {path}" + self._split_note(path))
        return items

    def _split_note(self, path: Path) -> str:
        return f" with split {self.cfg.reference_split!r}" if path.is_file() and self.cfg.reference_split else ""

    # -- shared models -------------------------------------------------------------------------
    def inception(self):
        path = self.path_of("inception_weights")
        if path is None:
            raise MetricSkipped("no Inception weights configured: set evaluate.inception_weights")

        def load():
            from pipeline.evaluation.metrics.inception import load_inception

            model = load_inception(path, input_size=self.cfg.inception_size).to(self.device)
            self.record_weights("inception", path)
            log.info("Inception-v3 (%s layout, %d classes) from %s", model.variant, model.num_classes, path)
            return model

        return self.memo("inception", load)

    def generated_block_stats(self):
        """Inception statistics (and logits) of the generated images' blocks, computed once."""
        model = self.inception()
        items = self.generated_images()
        return self.memo("generated_blocks", lambda: extract.inception_block_stats(
            model, items, self.cfg.block_size, self.cfg.block_stride, self.cfg.batch_size, self.device,
            self.bad_inputs, keep_logits=self.cfg.is_on == "blocks", desc="generated blocks"))


# -- metrics ----------------------------------------------------------------------------------
def metric_block_fid(ctx: EvalContext) -> dict:
    cfg = ctx.cfg
    ref_items = ctx.reference_images()
    ctx.generated_images()  # skip before loading anything when there is nothing to compare
    model = ctx.inception()
    sha = ctx.weights["inception"]["sha256"]
    params = {"block_size": cfg.block_size, "block_stride": cfg.block_stride,
              "inception_size": cfg.inception_size, "variant": model.variant}
    regions = {k: list(v) for k in ("generated_region", "reference_region") if (v := getattr(cfg, k))}
    key = reference.make_key("block_fid", [it.key() for it in ref_items], sha, params)

    def compute():
        stats, _, _ = extract.inception_block_stats(model, ref_items, cfg.block_size, cfg.block_stride,
                                                    cfg.batch_size, ctx.device, ctx.bad_inputs,
                                                    desc="reference blocks")
        return _enough(stats, "reference blocks")

    ref, reused, cache_path = reference.cached_stats(ctx.cache_dir, key, compute)
    gen, _, gen_counts = ctx.generated_block_stats()
    _enough(gen, "generated blocks")
    value = frechet_distance(gen.mean, gen.cov, ref.mean, ref.cov, method=cfg.fid_method)
    return {"value": value, "generated_images": gen_counts["images"], "generated_blocks": gen_counts["blocks"],
            "reference_images": len(ref_items), "reference_blocks": ref.count, **params, **regions,
            "reference_cache": str(cache_path), "reference_cache_reused": reused, "weights_sha256": sha}


def metric_inception_score(ctx: EvalContext) -> dict:
    cfg = ctx.cfg
    ctx.generated_images()
    model = ctx.inception()
    if cfg.is_on == "blocks":
        _, logits, counts = ctx.generated_block_stats()
        n_images = counts["images"]
    else:
        items = ctx.generated_images()
        logits = extract.inception_image_logits(model, items, cfg.batch_size, ctx.device, ctx.bad_inputs)
        n_images = len(logits)
    if len(logits) == 0:
        raise MetricSkipped("no readable generated images for the Inception Score")
    mean, std, splits = inception_score_from_logits(logits, cfg.is_splits)
    if splits < cfg.is_splits:
        log.warning("inception_score: %d samples, so %d splits instead of %d", len(logits), splits, cfg.is_splits)
    return {"value": mean, "std": std, "splits": splits, "samples": int(len(logits)), "images": n_images,
            "on": cfg.is_on, "inception_size": cfg.inception_size, "variant": model.variant,
            "weights_sha256": ctx.weights["inception"]["sha256"]}


def metric_clip_sim(ctx: EvalContext) -> dict:
    from pipeline.evaluation.metrics.clip_sim import clip_similarities, clip_weight_files, load_clip

    path = ctx.path_of("clip_model")
    if path is None:
        raise MetricSkipped("no CLIP model configured: set evaluate.clip_model")
    items = ctx.generated_images()
    prompted, no_prompt = [], 0
    for item in items:
        try:
            prompt = read_prompt(item.path)
        except MediaError as e:
            ctx.bad_inputs.append({"path": str(item.path), "reason": str(e)})
            continue
        if prompt:
            prompted.append((item, prompt))
        else:
            no_prompt += 1
    if not prompted:
        raise MetricSkipped(f"no generated image in {ctx.generated_dir} has a prompt (<name>.json 'prompt')")
    model, processor = ctx.memo("clip", lambda: load_clip(path))
    model.to(ctx.device)
    files = clip_weight_files(path)
    shas = {p.name: ctx.record_weights(f"clip:{p.name}", p) for p in files}
    prompts = dict(prompted)
    scores = []
    batch: list[tuple[np.ndarray, str]] = []
    for item, image in read_all([it for it, _ in prompted], ctx.bad_inputs):
        batch.append((image, prompts[item]))
        if len(batch) == ctx.cfg.batch_size:
            scores.append(clip_similarities(model, processor, *map(list, zip(*batch)), device=ctx.device))
            batch = []
    if batch:
        scores.append(clip_similarities(model, processor, *map(list, zip(*batch)), device=ctx.device))
    sims = np.concatenate(scores) if scores else np.zeros(0)
    if len(sims) == 0:
        raise MetricSkipped("no readable generated image with a prompt")
    return {"value": float(sims.mean()), "std": float(sims.std()), "images": int(len(sims)),
            "images_without_prompt": no_prompt, "model": str(path), "weights_sha256": shas}


def metric_fvd(ctx: EvalContext) -> dict:
    from pipeline.evaluation.metrics.i3d import load_i3d

    cfg = ctx.cfg
    path = ctx.path_of("i3d_weights")
    if path is None:
        raise MetricSkipped("no I3D weights configured: set evaluate.i3d_weights")
    ref_items = ctx.reference_videos()
    gen_items = ctx.generated_videos()
    model = ctx.memo("i3d", lambda: load_i3d(path).to(ctx.device))
    sha = ctx.record_weights("i3d", path)
    params = {"frames": cfg.fvd_frames, "size": cfg.fvd_size, "features": "logits averaged over time"}
    key = reference.make_key("fvd", [it.key() for it in ref_items], sha, params)

    def stats_of(items, desc):
        return _enough(extract.i3d_stats(model, items, cfg.fvd_frames, cfg.fvd_size, cfg.video_batch_size,
                                         ctx.device, ctx.bad_inputs, desc=desc), desc)

    ref, reused, cache_path = reference.cached_stats(ctx.cache_dir, key,
                                                     lambda: stats_of(ref_items, "reference clips"))
    gen = stats_of(gen_items, "generated clips")
    value = frechet_distance(gen.mean, gen.cov, ref.mean, ref.cov, method=cfg.fid_method)
    return {"value": value, "generated_clips": gen.count, "reference_clips": ref.count, **params,
            "reference_cache": str(cache_path), "reference_cache_reused": reused, "weights_sha256": sha}


def _enough(stats, what: str):
    if stats.count < 2:
        raise MetricSkipped(f"a Fréchet distance needs at least 2 {what}, have {stats.count}")
    return stats


def metric_bits_per_token(ctx: EvalContext) -> dict:
    """Validation bits per token (cross-entropy / ln 2) of the exported renderer on held-out token
    grids, teacher-forced patch by patch in one direction (pipeline.training.validate)."""
    from pipeline.formats.renderer_io import CONFIG, WEIGHTS, RendererLoadError, export_dir, load_renderer
    from pipeline.formats.shards import ShardError
    from pipeline.training.validate import DataError, held_out_set, validation_bits_per_token

    run, cfg = ctx.run_cfg, ctx.cfg
    folder = run.resolve(cfg.renderer_export) if cfg.renderer_export else export_dir(run)
    if not (folder / CONFIG).is_file():
        raise MetricSkipped(f"no trained renderer export at {folder} (stage 60 has not exported)")
    try:
        renderer, tokenizer = load_renderer(folder, ctx.device)
        tokenset = held_out_set(run, renderer.cfg, run.resolve(cfg.validation_tokens) if cfg.validation_tokens
                                else None)
    except (RendererLoadError, ShardError, DataError) as e:
        raise MetricSkipped(str(e)) from e
    tokens = tokenset.folder
    if len(tokenset) == 0:
        raise MetricSkipped(f"{tokens}: no held-out items")
    out = validation_bits_per_token(renderer, tokenset, cfg.validation_direction, cfg.validation_batch_size,
                                    tokenizer)
    ctx.weights["renderer"] = {"path": str(folder / WEIGHTS), "sha256": atomic.sha256_file(folder / WEIGHTS)}
    return {"value": out["bits_per_token"], "loss_nats": out["loss_nats"], "tokens": out["tokens"],
            "items": out["items"], "direction": str(out["direction"]), "token_set": str(tokens),
            "bits_per_token_by_patch": out["bits_per_token_by_patch"]}


def metric_copy_share(ctx: EvalContext) -> dict:
    """Single-image runs: the share of generated patches whose codes equal a block of the source's training
    box, per sample and over all, with the held-out strip's share as the baseline (pipeline.evaluation.copying)."""
    from pipeline.evaluation.copying import analyse_samples
    from pipeline.formats.canvas import is_canvas_set
    from pipeline.formats.renderer_io import model_config

    run = ctx.run_cfg
    canvases = ctx.path_of("copy_canvases") or run.run_dir / "tokens" / "single_image"
    if not is_canvas_set(canvases):
        raise MetricSkipped(f"no single-image canvases at {canvases} (not a single-image run)")
    if not ctx.generated_dir.is_dir() or not any(ctx.generated_dir.glob("*.codes.npy")):
        raise MetricSkipped(f"no saved code grids in {ctx.generated_dir} (set sample.save_codes: true)")
    hp, wp, _ = model_config(run).patch
    per = analyse_samples(ctx.generated_dir, canvases, (hp, wp))
    total = sum(r["generated"]["patches"] for r in per.values())
    copied = sum(r["generated"]["patches"] * (r["generated"]["copy_share"] or 0) for r in per.values())
    baseline = next((r["holdout_baseline"] for r in per.values() if r["holdout_baseline"]), None)
    return {"value": copied / total if total else None, "patches": total, "samples": per,
            "holdout_baseline": baseline, "canvases": str(canvases)}


METRICS: dict[str, Callable[[EvalContext], dict]] = {
    "bits_per_token": metric_bits_per_token,
    "copy_share": metric_copy_share,
    "block_fid": metric_block_fid,
    "inception_score": metric_inception_score,
    "clip_sim": metric_clip_sim,
    "fvd": metric_fvd,
}


# -- the stage --------------------------------------------------------------------------------
def _validate(run_cfg: RunConfig, cfg: EvaluateConfig) -> None:
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"{run_cfg.path}: evaluate.metrics has unknown metric(s) {unknown}; "
                          f"known: {sorted(METRICS)}")
    for key in ("inception_weights", "i3d_weights"):
        value = getattr(cfg, key)
        if value and not run_cfg.resolve(value).is_file():
            raise ConfigError(f"{run_cfg.path}: evaluate.{key}: file not found: {run_cfg.resolve(value)}")
    for key in ("clip_model",):
        value = getattr(cfg, key)
        if value and not run_cfg.resolve(value).is_dir():
            raise ConfigError(f"{run_cfg.path}: evaluate.{key}: directory not found: {run_cfg.resolve(value)}")
    for key in ("reference", "reference_videos"):
        value = getattr(cfg, key)
        if value and not run_cfg.resolve(value).exists():
            raise ConfigError(f"{run_cfg.path}: evaluate.{key}: not found: {run_cfg.resolve(value)}")


def evaluate(run_cfg: RunConfig, cfg: EvaluateConfig | None = None, out: Path | None = None) -> dict:
    """Compute the configured metrics, write run_dir/eval/<output_name> (or `out`), and return the results.

    `cfg` replaces the config's `evaluate` section (the protocol evaluates each table row with its
    own settings); the reference cache stays run_dir/eval/cache, shared by every caller."""
    started = time.time()
    cfg = cfg if cfg is not None else run_cfg.section("evaluate", EvaluateConfig)
    _validate(run_cfg, cfg)
    eval_dir = run_cfg.run_dir / "eval"
    atomic.remove_stale_temporaries(eval_dir / "cache")
    ctx = EvalContext(run_cfg=run_cfg, cfg=cfg, device=pick_device(cfg.device, key="evaluate.device"),
                      generated_dir=run_cfg.resolve(cfg.generated) if cfg.generated else run_cfg.run_dir / "samples",
                      cache_dir=eval_dir / "cache")
    log.info("evaluating %s on %s: %s", ctx.generated_dir, ctx.device, ", ".join(cfg.metrics))
    results: dict[str, Any] = {"metrics": {}, "skipped": {}}
    for name in cfg.metrics:
        t0 = time.time()
        try:
            value = METRICS[name](ctx)
        except MetricSkipped as e:
            results["skipped"][name] = str(e)
            log.warning("%s skipped: %s", name, e)
            continue
        value["seconds"] = round(time.time() - t0, 3)
        results["metrics"][name] = value
        log.info("%s = %.6g (%.1f s)", name, value["value"], value["seconds"])
    # the same unreadable file is met by every metric that reads it: report it once
    bad_inputs = list({b["path"]: b for b in reversed(ctx.bad_inputs)}.values())[::-1]
    results.update(weights=ctx.weights, bad_inputs=bad_inputs, generated=str(ctx.generated_dir),
                   device=str(ctx.device), config=to_dict(cfg), seconds=round(time.time() - started, 3))
    out = out or eval_dir / cfg.output_name
    atomic.write_json(out, results)
    results["output"] = str(out)
    return results


@entry_point(user_errors=(ValueError,))
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stage 80: Block-FID, IS, CLIP-SIM and FVD of generated samples")
    parser.add_argument("--config", required=True, help="the run's YAML config (section 'evaluate')")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not rank_info().is_main:
        log.info("rank %d: evaluation runs on rank 0 only; nothing to do", rank_info().rank)
        return 0
    results = evaluate(load_config(args.config))
    done = ", ".join(f"{k}={v['value']:.4g}" for k, v in results["metrics"].items()) or "none"
    log.info("evaluate: %s; skipped %d (%s); %d unreadable inputs; wrote %s", done, len(results["skipped"]),
             ", ".join(results["skipped"]) or "-", len(results["bad_inputs"]), results["output"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
