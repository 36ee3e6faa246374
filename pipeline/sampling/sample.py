"""Stage 70: sample from the trained renderer, images of any size, extensions, videos, prompt files.

    python -m pipeline.sampling.sample --config run.yaml [--only JOB ...]

Reads section `sample` of the run config. The renderer comes from the trainer's export
(`pipeline.formats.renderer_io.load_renderer`, default run_dir/train/export), the VQGAN from section
`vqgan` (`pipeline.formats.vqgan_io.load_vqgan`). Every job writes into `out_dir` (default
run_dir/samples) an output and, beside it, `<name>.json` with its settings: prompt, seed, size,
direction, sampling settings, the renderer export and VQGAN paths with their sha256, the
sampler's statistics. The evaluation stage reads its "prompt" key.

    sample:
      device: auto                  # auto (CUDA when available), cpu, cuda, cuda:1
      sampling: {temperature: 1.0, top_k: 0, top_p: 1.0, cfg_scale: 1.0, pnar_steps: null}
                                    # AR speed (model.decoding): compile_decode: true, cuda_graph: true
      decode_margin: null           # codes decoded past each side of a window; null = one patch
      save_codes: false             # also stream each output's codes to <name>.codes.npy
      progress: true                # tqdm over patches
      jobs:
        - {name: panorama, mode: text_to_image, prompt: "a lake at dawn", size: [128, 512], direction: down-right}
        - {name: ext_right, mode: extend, input: data/images/manifest.parquet, input_index: 0,
           input_crop: [0, 0, 64, 128], side: right, amount: 64}
        - {name: clip, mode: image_to_video, input: data/videos/kept.parquet, frames: 8, fps: 5}
        - {name: prompts, mode: batch, prompts_file: prompts.txt, size: [128, 128], batch_size: 4}

Modes: text_to_image (prompt, size or patches, `count` images), unconditional (no prompt),
extend (input image, side right/left/up/down, amount in pixels; the output is the enlarged image),
image_to_video (input first frame, `frames` to predict, fps), batch (prompts_file: one prompt per
line, or JSONL objects with "prompt" and optional "name"/"seed"; outputs `<job>/<name>.png`).
`input` is an image, a video (its first frame) or a Parquet manifest with `input_index` (an image
row is read with its crop, a clip row by its first frame); `input_crop` [x0, y0, x1, y1] crops it.
An extension's `input` may also be a code grid `.npy` (a single-image run's canvas, a sample's
`.codes.npy`) or a canvas-set folder (run_dir/tokens/single_image, `input_index` picks the canvas),
continued with its codes unchanged (pipeline.sampling.given); a large picture is
encoded in tiles when `encode_tile` is set.
Relative paths (input, prompts_file, export_dir, out_dir) are taken from the config file's folder.

Sets (the paper's protocol runs over a whole test split): with `split` (e.g. test; "" = every row)
a Parquet `input` or `prompts_file` is read row by row, in manifest order, the first `limit` rows
(null = all), and each row gives one output `<job>/<row id>.png|mp4`:
    - {name: t2i, mode: batch, prompts_file: data/images/manifest.parquet, split: test, size: [1024, 1024]}
          each row's caption is the prompt (Table 1)
    - {name: ext-right, mode: extend, input: data/images/manifest.parquet, split: test, side: right,
       amount: 512, captions: true, batch_size: 8}
          each image loses `amount` pixels on `side` and the model grows them back, so the output has
          the image's size and the real image is the answer (Table 3); `captions: true` prompts each
          with its own caption; the JSON records the given and the generated box in output pixels
    - {name: i2v, mode: image_to_video, input: data/videos/kept.parquet, split: test, frames: 7}
          each clip's first frame predicted forward (Table 2)

Under a launcher with several ranks (LAUNCHER="torchrun --nproc_per_node 8"), the outputs (a
batch group, an extension, a video) go round-robin to the ranks, each on its own GPU.

Seeds: a job's seed (default: the run's seed + the job's index) seeds item i with seed + i. With
batch_size B > 1, B items share one generator (seeded with the first item's seed); the JSON
records the seed and the row. Resuming: an output whose JSON holds the same settings is skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from model.config import SamplingConfig
from model.directions import Direction
from pipeline import atomic
from pipeline.config import ConfigError, RunConfig, from_dict, load_config, to_dict
from pipeline.errors import entry_point
from pipeline.ranks import rank_info
from pipeline.sampling.generate import (
    GivenCodes,
    extension_plan,
)
from pipeline.sampling.given import check_whole_patches, code_file, encode_picture, read_code_file
from pipeline.sampling.image_to_video import VIDEO_DIRECTION, encode_frame, image_to_video
from pipeline.sampling.inputs import load_input as load_picture
from pipeline.sampling.inputs import manifest_set, read_prompts, row_picture
from pipeline.sampling.sampler import Sampler, beside
from pipeline.sampling.stream_decode import remove_stale_canvases

log = logging.getLogger("sample")
Mode = Literal["text_to_image", "unconditional", "extend", "image_to_video", "batch"]


@dataclass
class JobConfig:
    name: str
    mode: Mode
    prompt: str | None = None
    size: tuple[int, int] | None = None  # [height, width] in pixels
    patches: tuple[int, int] | None = None  # [H, W] in patches (instead of size)
    direction: str | None = None  # images: default down-right (memory flat in the width)
    count: int = 1  # text_to_image / unconditional: how many images
    seed: int | None = None
    sampling: dict = field(default_factory=dict)  # overrides of the section's sampling settings
    batch_size: int = 1
    input: str | None = None
    input_index: int = 0
    input_crop: tuple[int, int, int, int] | None = None
    side: str | None = None
    amount: int | None = None  # extend: pixels added on `side`
    frames: int | None = None  # image_to_video: frames to predict
    fps: float = 5.0
    prompts_file: str | None = None
    export_dir: str | None = None  # this job's renderer (e.g. the video model); default: the section's
    split: str | None = None  # a set: every row of this split of a Parquet input / prompts_file ("" = all)
    limit: int | None = None  # a set: at most this many rows (the first ones)
    captions: bool = False  # extend / image_to_video sets: each row's caption is its prompt


@dataclass
class SampleSection:
    export_dir: str | None = None  # default run_dir/train/export
    out_dir: str | None = None  # default run_dir/samples
    device: str = "auto"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    decode_margin: int | None = None
    # extend: a picture input larger than encode_tile pixels is encoded in tiles with encode_margin pixels of
    # context (pipeline.sampling.given); null = in one pass
    encode_tile: int | None = None
    encode_margin: int = 32
    save_codes: bool = False  # also stream the codes to <name>.codes.npy
    progress: bool = True
    jobs: list[JobConfig] = field(default_factory=list)


NEEDS = {"text_to_image": {"prompt"}, "unconditional": set(), "extend": {"input", "side", "amount"},
         "image_to_video": {"input", "frames"}, "batch": {"prompts_file"}}
SET = {"split", "limit"}
ALLOWED = {"text_to_image": {"prompt", "size", "patches", "direction", "count"},
           "unconditional": {"size", "patches", "direction", "count"},
           "extend": {"prompt", "input", "input_index", "input_crop", "side", "amount", "captions"} | SET,
           "image_to_video": {"prompt", "input", "input_index", "input_crop", "frames", "fps", "captions"} | SET,
           "batch": {"prompts_file", "size", "patches", "direction"} | SET}
ONE_INPUT = {"input_index", "input_crop"}  # keys of a single-input job, not of a set
COMMON = {"name", "mode", "seed", "sampling", "batch_size", "export_dir"}


def check_jobs(sec: SampleSection, where: str) -> None:
    names = set()
    defaults = JobConfig(name="", mode="unconditional")
    for job in sec.jobs:
        w = f"{where}.jobs[{job.name}]"
        if not job.name or "/" in job.name or job.name.startswith("."):
            raise ConfigError(f"{w}: a job name must be a plain file name, got {job.name!r}")
        if job.name in names:
            raise ConfigError(f"{w}: two jobs are named {job.name!r}")
        names.add(job.name)
        given = {k for k in vars(job) if getattr(job, k) != getattr(defaults, k)} - COMMON
        missing = sorted(k for k in NEEDS[job.mode] if getattr(job, k) is None)
        stray = sorted(given - ALLOWED[job.mode] - NEEDS[job.mode])
        if missing:
            raise ConfigError(f"{w}: mode {job.mode} needs {missing}")
        if stray:
            raise ConfigError(f"{w}: keys {stray} do not apply to mode {job.mode}")
        if job.mode in ("text_to_image", "unconditional", "batch") and (job.size is None) == (job.patches is None):
            raise ConfigError(f"{w}: give exactly one of size (pixels) and patches")
        if job.side is not None and job.side not in ("right", "left", "up", "down"):
            raise ConfigError(f"{w}: side must be right, left, up or down, got {job.side!r}")
        if job.count < 1 or job.batch_size < 1 or (job.frames is not None and job.frames < 1):
            raise ConfigError(f"{w}: count, batch_size and frames must be >= 1")
        if job.direction is not None:
            Direction.parse(job.direction)
        _check_set(job, given, w)


def _check_set(job: JobConfig, given: set[str], w: str) -> None:
    source = job.prompts_file if job.mode == "batch" else job.input
    if job.split is None:
        if job.limit is not None or job.captions:
            raise ConfigError(f"{w}: limit and captions apply to sets only (give split)")
        return
    if not str(source).lower().endswith(".parquet"):
        raise ConfigError(f"{w}: split makes a set of a Parquet manifest's rows; {source!r} is not one")
    stray = sorted(given & ONE_INPUT)
    if stray:
        raise ConfigError(f"{w}: keys {stray} pick one input; a set (split) takes every row")
    if job.captions and job.prompt is not None:
        raise ConfigError(f"{w}: give one prompt or captions: true, not both")
    if job.limit is not None and job.limit < 1:
        raise ConfigError(f"{w}: limit must be >= 1 (or null for every row)")


# ------------------------------------------------------------------------------ inputs


def load_input(cfg: RunConfig, job: JobConfig) -> np.ndarray:
    """The job's input picture as uint8 RGB [H, W, 3] (image file, video's first frame, manifest row)."""
    return load_picture(cfg.resolve(job.input), job.input_index, job.input_crop,
                        where=f"{cfg.path}: sample.jobs[{job.name}].input")


def set_rows(s: Sampler, job: JobConfig, where: str) -> tuple[Path, list[tuple[int, dict]]]:
    """The manifest and its (index, row) pairs a set job runs over."""
    path = s.cfg.resolve(job.prompts_file if job.mode == "batch" else job.input)
    return path, manifest_set(path, job.split, job.limit, where)


# ------------------------------------------------------------------------------ one output


def _done(json_path: Path, settings: dict) -> bool:
    if not json_path.is_file():
        return False
    try:
        return atomic.read_json(json_path).get("settings") == json.loads(json.dumps(settings, default=str))
    except (ValueError, AttributeError):
        return False


def run_job(s: Sampler, job: JobConfig, index: int, out_dir: Path, summary: dict) -> None:
    where = f"{s.cfg.path}: sample.jobs[{job.name}]"
    sampling = from_dict(SamplingConfig, {**to_dict(s.sec.sampling), **job.sampling}, where=f"{where}.sampling")
    seed = job.seed if job.seed is not None else s.cfg.seed + index
    common = {"mode": job.mode, "sampling": to_dict(sampling), "models": s.models}
    try:
        if job.mode == "image_to_video":
            _run_video(s, job, where, common, sampling, seed, out_dir, summary)
        elif job.mode == "extend":
            _run_extend(s, job, where, common, sampling, seed, out_dir, summary)
        else:
            _run_images(s, job, where, common, sampling, seed, out_dir, summary)
    except ValueError as e:  # sizes that do not fit the model: name the job
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: {e}") from e


def _input_record(job: JobConfig) -> dict:
    return {"path": job.input, "index": job.input_index, "crop": list(job.input_crop) if job.input_crop else None}


def _run_video(s: Sampler, job, where, common, sampling, seed, out_dir, summary) -> None:
    if job.split is not None:  # a set: each row's first frame, one clip each
        manifest, rows = set_rows(s, job, where)
        for pos, (index, row) in _bar(s, job, list(enumerate(rows)), 1):
            prompt = (row.get("caption") or "") if job.captions else job.prompt
            _video_item(s, job, where, common, sampling, seed + pos, out_dir / job.name / f"{row['id']}.mp4", prompt,
                        _row_record(job, index, row), [int(row["size"])] * 2,
                        lambda row=row: row_picture(manifest, row), summary)
        return
    frame = load_input(s.cfg, job)
    _video_item(s, job, where, common, sampling, seed, out_dir / f"{job.name}.mp4", job.prompt, _input_record(job),
                list(frame.shape[:2]), lambda: frame, summary)


def _video_item(s: Sampler, job, where, common, sampling, seed, out, prompt, record, size, picture, summary) -> None:
    settings = {**common, "prompt": prompt or "", "seed": seed, "direction": VIDEO_DIRECTION,
                "input": record, "frames": job.frames, "fps": job.fps, "size": size}

    def make() -> dict:
        ids, mask = s.captions([prompt], where)
        stats = image_to_video(s.renderer, s.vqgan, picture(), job.frames, out, job.fps, text_ids=ids,
                               text_mask=mask, sampling=sampling,
                               generator=torch.Generator(device=s.device).manual_seed(seed),
                               codes_path=out.with_suffix(".codes.npy") if s.sec.save_codes else None,
                               progress=s.sec.progress)
        return stats.to_dict()

    _emit(out, settings, summary, make)


def _row_record(job: JobConfig, index: int, row: dict) -> dict:
    return {"path": job.prompts_file if job.mode == "batch" else job.input, "index": index, "id": row["id"],
            "split": row.get("split")}


def _run_extend(s: Sampler, job, where, common, sampling, seed, out_dir, summary) -> None:
    if job.split is not None:
        _run_extend_set(s, job, where, common, sampling, seed, out_dir, summary)
        return
    if job.amount % s.f:
        raise ConfigError(f"{where}: amount {job.amount} is not a multiple of the VQGAN factor {s.f}")
    codes = picture = None
    path = code_file(s.cfg.resolve(job.input), job.input_index, f"{where}.input")
    if path is not None:  # a code grid (a canvas, a sample's codes): used as it is
        codes = read_code_file(path, job.input_crop, s.f, s.vqgan.config.n_embed, f"{where}.input")
        h_codes, w_codes = codes.shape[-2:]
        check_whole_patches(h_codes * s.f, w_codes * s.f, s.renderer.cfg.patch, s.f, where)
    else:
        picture = load_input(s.cfg, job)
        check_whole_patches(*picture.shape[:2], s.renderer.cfg.patch, s.f, where)
        h_codes, w_codes = picture.shape[0] // s.f, picture.shape[1] // s.f
    hp, wp, _ = s.renderer.cfg.patch
    grid, origin, direction = extension_plan((h_codes, w_codes), job.side, job.amount // s.f, s.renderer.cfg.patch)
    stem = out_dir / job.name
    settings = {**common, "prompt": job.prompt or "", "seed": seed, "direction": direction.name,
                "input": _input_record(job), "side": job.side, "amount": job.amount,
                "given_size": [h_codes * s.f, w_codes * s.f], "size": [grid.H * hp * s.f, grid.W * wp * s.f]}
    if s.sec.encode_tile is not None and picture is not None:
        settings["encode"] = {"tile": s.sec.encode_tile, "margin": s.sec.encode_margin}

    def make() -> dict:
        given = codes if picture is None else encode_picture(s.vqgan, picture, s.sec.encode_tile, s.sec.encode_margin)
        return s.image(grid, direction, [stem], [job.prompt], sampling, seed, where, GivenCodes(given, origin))

    _emit(beside(stem, ".png"), settings, summary, make)


def regrow_boxes(height: int, width: int, side: str, amount: int) -> tuple[list[int], list[int]]:
    """([x0, y0, x1, y1] given, generated) when `amount` pixels on `side` of a height x width image are
    removed and grown back: the given part and the part the model makes, in output pixels."""
    if side in ("right", "left") and not 0 < amount < width or side in ("down", "up") and not 0 < amount < height:
        raise ValueError(f"cannot regrow {amount} pixels on the {side} of a {width} x {height} image")
    if side == "right":
        return [0, 0, width - amount, height], [width - amount, 0, width, height]
    if side == "left":
        return [amount, 0, width, height], [0, 0, amount, height]
    if side == "down":
        return [0, 0, width, height - amount], [0, height - amount, width, height]
    return [0, amount, width, height], [0, 0, width, amount]


def _run_extend_set(s: Sampler, job, where, common, sampling, seed, out_dir, summary) -> None:
    """Every row's image minus `amount` pixels on `side`, grown back; `batch_size` images at a time."""
    manifest, rows = set_rows(s, job, where)
    sizes = {int(r["size"]) for _, r in rows}
    if len(sizes) != 1 or any(r.get("crop") is None for _, r in rows):
        raise ConfigError(f"{where}: an extension set needs image rows of one size, got sizes {sorted(sizes)}")
    side = sizes.pop()
    given_box, generated_box = regrow_boxes(side, side, job.side, job.amount)
    x0, y0, x1, y1 = given_box
    hp, wp, _ = s.renderer.cfg.patch
    if (x1 - x0) % (wp * s.f) or (y1 - y0) % (hp * s.f) or job.amount % ((wp if job.side in ("right", "left")
                                                                            else hp) * s.f):
        raise ConfigError(f"{where}: {side} x {side} images minus {job.amount} pixels on the {job.side} are not whole "
                          f"patches of {hp * s.f} x {wp * s.f} pixels")
    grid, origin, direction = extension_plan(((y1 - y0) // s.f, (x1 - x0) // s.f), job.side, job.amount // s.f,
                                             s.renderer.cfg.patch)
    for start in _bar(s, job, range(0, len(rows), job.batch_size), job.batch_size):
        group = rows[start:start + job.batch_size]
        prompts = [(r.get("caption") or "") if job.captions else job.prompt for _, r in group]
        stems = [out_dir / job.name / str(r["id"]) for _, r in group]
        settings = [{**common, "prompt": p or "", "seed": seed + start, "direction": direction.name,
                     "input": _row_record(job, i, r), "side": job.side, "amount": job.amount, "size": [side, side],
                     "given_box": given_box, "generated_box": generated_box,
                     "batch": {"size": len(group), "row": b}} for b, ((i, r), p) in enumerate(zip(group, prompts))]

        def make(group=group, stems=stems, prompts=prompts, start=start) -> dict:
            codes = torch.cat([encode_frame(s.vqgan, row_picture(manifest, r)[y0:y1, x0:x1], s.renderer.cfg.patch,
                                            where=f"{where} row {r['id']}") for _, r in group])
            return s.image(grid, direction, stems, prompts, sampling, seed + start, where, GivenCodes(codes, origin))

        _emit_group([beside(stem, ".png") for stem in stems], settings, summary, make)


def _run_images(s: Sampler, job, where, common, sampling, seed, out_dir, summary) -> None:
    grid = s.grid_of(job, where)
    direction = Direction.parse(job.direction or "down-right")
    hp, wp, _ = s.renderer.cfg.patch
    size = [grid.H * hp * s.f, grid.W * wp * s.f]
    if job.mode == "batch" and job.split is not None:  # a set: each row's caption, named by the row's id
        _, rows = set_rows(s, job, where)
        items = [(r.get("caption") or "", seed + pos, out_dir / job.name / str(r["id"]))
                 for pos, (_, r) in enumerate(rows)]
    elif job.mode == "batch":
        path = s.cfg.resolve(job.prompts_file)
        entries, rejects = read_prompts(path)
        summary["rejected_prompts"] += [{"file": str(path), **r} for r in rejects]
        items = [(e["prompt"], e.get("seed", seed + e["index"]),
                  out_dir / job.name / e.get("name", f"{e['index']:05d}")) for e in entries]
    else:
        prompt = job.prompt if job.mode == "text_to_image" else None
        items = [(prompt, seed + i, out_dir / (job.name if job.count == 1 else f"{job.name}_{i:03d}"))
                 for i in range(job.count)]
    for start in _bar(s, job, range(0, len(items), job.batch_size), job.batch_size):
        group = items[start:start + job.batch_size]
        group_seed = group[0][1]
        settings = [{**common, "prompt": p or "", "seed": group_seed, "direction": direction.name, "size": size,
                     "patches": list(grid.size), "batch": {"size": len(group), "row": r}}
                    for r, (p, _, _) in enumerate(group)]

        def make(group=group, group_seed=group_seed) -> dict:
            return s.image(grid, direction, [stem for _, _, stem in group], [p for p, _, _ in group], sampling,
                           group_seed, where)

        _emit_group([beside(stem, ".png") for _, _, stem in group], settings, summary, make)


def _bar(s: Sampler, job: JobConfig, units, per_unit: int):
    """A progress bar over a job's units of work (groups of outputs) when it has several."""
    from tqdm import tqdm

    units = list(units)
    return tqdm(units, desc=f"{job.name} ({per_unit} per step)", unit="step",
                disable=not s.sec.progress or len(units) < 2)


def _mine(summary: dict) -> bool:
    """Units of work (one output group each) go round-robin to the launcher's ranks."""
    unit = summary["units"]
    summary["units"] += 1
    return summary["ranks"].owns(unit)


def _emit(output: Path, settings: dict, summary: dict, make) -> None:
    """Make one output unless its JSON already records the same settings; then write the JSON."""
    _emit_group([output], [settings], summary, make)


def _emit_group(outputs: list[Path], settings: list[dict], summary: dict, make) -> None:
    """One unit of work: make the outputs of one batch together (`make` returns their shared statistics)
    unless every one's JSON already records its settings; then write each JSON."""
    if not _mine(summary):
        return
    sidecars = [output.with_suffix(".json") for output in outputs]
    if all(_done(sidecar, st) for sidecar, st in zip(sidecars, settings)):
        summary["skipped"] += len(outputs)
        return
    started = time.perf_counter()
    stats = make()
    for output, sidecar, st in zip(outputs, sidecars, settings):
        _write_sidecar(sidecar, st, stats, time.perf_counter() - started)
        summary["written"].append(str(output))


def _write_sidecar(path: Path, settings: dict, stats: dict, seconds: float) -> None:
    # Top-level copies of the main settings for readers (the evaluation stage reads "prompt").
    atomic.write_json(path, {**settings, "settings": settings, "stats": stats, "seconds": round(seconds, 3)})


def run_jobs(cfg: RunConfig, sec: SampleSection, jobs: list[JobConfig], out_dir: Path | None = None) -> dict:
    """Run `jobs` (already checked) into `out_dir` (default: the section's), this rank's share of them.

    The sampling entry point of the pipeline: stage 70's main() and the paper's protocol
    (pipeline/evaluation/protocol.py) both call it. Returns the summary that the done-marker
    `.done.json` (`.done-rank<R>.json` under several ranks) also records."""
    out_dir = out_dir or (cfg.resolve(sec.out_dir) if sec.out_dir else cfg.run_dir / "samples")
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_canvases(out_dir) + atomic.remove_stale_temporaries(out_dir)
    for job in jobs:  # a set's outputs live one folder down
        if (out_dir / job.name).is_dir():
            stale += remove_stale_canvases(out_dir / job.name) + atomic.remove_stale_temporaries(out_dir / job.name)
    if stale:
        log.info("removed %d temporaries of an interrupted run in %s", stale, out_dir)
    started = time.perf_counter()
    samplers: dict[str | None, Sampler] = {}  # one per renderer export the jobs name
    ranks = rank_info()
    summary: dict = {"written": [], "skipped": 0, "rejected_prompts": [], "units": 0, "ranks": ranks}
    for job in jobs:
        log.info("job %s (%s)", job.name, job.mode)
        if job.export_dir not in samplers:
            samplers[job.export_dir] = Sampler(cfg, sec, job.export_dir)
        sampler = samplers[job.export_dir]
        run_job(sampler, job, sec.jobs.index(job) if job in sec.jobs else 0, out_dir, summary)
    seconds = time.perf_counter() - started
    summary.pop("ranks")
    summary.update(seconds=round(seconds, 2), device=str(sampler.device), out_dir=str(out_dir))
    marker = ".done.json" if ranks.world_size == 1 else f".done-rank{ranks.rank}.json"
    atomic.mark_done(out_dir / marker, summary)
    log.info("sampling done: %d outputs written, %d already there, %d prompt lines rejected, %.1f s on %s -> %s",
             len(summary["written"]), summary["skipped"], len(summary["rejected_prompts"]), seconds,
             sampler.device, out_dir)
    return summary


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--only", nargs="*", default=None, help="run only the jobs with these names")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    sec = cfg.section("sample", SampleSection)
    check_jobs(sec, f"{cfg.path}: sample")
    jobs = [j for j in sec.jobs if args.only is None or j.name in args.only]
    if args.only:
        unknown = sorted(set(args.only) - {j.name for j in sec.jobs})
        if unknown:
            raise ConfigError(f"{cfg.path}: --only names jobs that the config does not have: {unknown}")
    if not jobs:
        raise ConfigError(f"{cfg.path}: sample.jobs lists no job to run")
    run_jobs(cfg, sec, jobs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
