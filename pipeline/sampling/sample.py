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

import torch

from model.config import SamplingConfig
from model.directions import Direction, Grid
from pipeline import atomic
from pipeline.config import ConfigError, RunConfig, from_dict, load_config, to_dict
from pipeline.formats.vqgan_io import load_vqgan
from pipeline.ranks import rank_info
from pipeline.sampling.generate import (
    CodeFileWriter,
    GivenCodes,
    MemoryLedger,
    Tee,
    extension_plan,
    generate,
    slab_axis,
)
from pipeline.sampling.given import check_whole_patches, code_file, encode_picture, load_input, read_code_file
from pipeline.sampling.image_to_video import VIDEO_DIRECTION, image_to_video
from pipeline.sampling.stream_decode import Canvases, ImageStreamDecoder, remove_stale_canvases, write_png

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
ALLOWED = {"text_to_image": {"prompt", "size", "patches", "direction", "count"},
           "unconditional": {"size", "patches", "direction", "count"},
           "extend": {"prompt", "input", "input_index", "input_crop", "side", "amount"},
           "image_to_video": {"prompt", "input", "input_index", "input_crop", "frames", "fps"},
           "batch": {"prompts_file", "size", "patches", "direction"}}
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


# ------------------------------------------------------------------------------ prompts


def read_prompts(path: Path) -> tuple[list[dict], list[dict]]:
    """Items {"prompt", "index", "name"?, "seed"?} of a prompt file and the rejected lines {"line", "reason"}.

    `index` counts the non-blank lines (rejected ones too), so the default output names and
    seeds of the other prompts do not move when a bad line is fixed.
    """
    items, rejects, names = [], [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the prompt file ({e})") from e
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    index = -1
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        index += 1
        if not jsonl:
            items.append({"prompt": line.strip(), "index": index})
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise ValueError('expected an object with a string "prompt"')
            if "seed" in obj and (isinstance(obj["seed"], bool) or not isinstance(obj["seed"], int)):
                raise ValueError('"seed" must be an integer')
            if "name" in obj and (not isinstance(obj["name"], str) or "/" in obj["name"] or not obj["name"]
                                  or obj["name"].startswith(".")):
                raise ValueError('"name" must be a plain file name')
            if "name" in obj and obj["name"] in names:
                raise ValueError(f"name {obj['name']!r} is used by an earlier line")
        except ValueError as e:
            rejects.append({"line": n, "reason": str(e)})
            log.warning("%s:%d: skipped (%s)", path, n, e)
            continue
        names.add(obj.get("name"))
        items.append({"index": index, **{k: obj[k] for k in ("prompt", "name", "seed") if k in obj}})
    return items, rejects


# ------------------------------------------------------------------------------ one output


class Sampler:
    """The loaded models and shared settings; renders one job item after another."""

    def __init__(self, cfg: RunConfig, sec: SampleSection, export: str | None = None):
        from pipeline.formats.renderer_io import WEIGHTS, export_dir, load_renderer

        self.cfg, self.sec = cfg, sec
        self.device = pick_device(sec.device, cfg)
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

    def grid_of(self, job: JobConfig, where: str) -> Grid:
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


def pick_device(kind: str, cfg: RunConfig) -> torch.device:
    if kind == "auto":
        return torch.device(f"cuda:{rank_info().local_rank % torch.cuda.device_count()}"
                            if torch.cuda.is_available() else "cpu")
    dev = torch.device(kind)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.path}: sample.device is {kind!r} but no CUDA device is available")
    return dev


def beside(stem: Path, ext: str) -> Path:
    """`stem` + `ext`. Not Path.with_suffix, which would cut a name such as "wide-0.8" at its dot
    and let two jobs write the same file."""
    return stem.with_name(stem.name + ext)


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
    frame = load_input(s.cfg, job)
    out = out_dir / f"{job.name}.mp4"
    settings = {**common, "prompt": job.prompt or "", "seed": seed, "direction": VIDEO_DIRECTION,
                "input": _input_record(job), "frames": job.frames, "fps": job.fps, "size": list(frame.shape[:2])}

    def make() -> dict:
        ids, mask = s.captions([job.prompt], where)
        stats = image_to_video(s.renderer, s.vqgan, frame, job.frames, out, job.fps, text_ids=ids, text_mask=mask,
                               sampling=sampling, generator=torch.Generator(device=s.device).manual_seed(seed),
                               codes_path=out.with_suffix(".codes.npy") if s.sec.save_codes else None,
                               progress=s.sec.progress)
        return stats.to_dict()

    _emit(out, settings, summary, make)


def _run_extend(s: Sampler, job, where, common, sampling, seed, out_dir, summary) -> None:
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


def _run_images(s: Sampler, job, where, common, sampling, seed, out_dir, summary) -> None:
    grid = s.grid_of(job, where)
    direction = Direction.parse(job.direction or "down-right")
    hp, wp, _ = s.renderer.cfg.patch
    size = [grid.H * hp * s.f, grid.W * wp * s.f]
    if job.mode == "batch":
        path = s.cfg.resolve(job.prompts_file)
        entries, rejects = read_prompts(path)
        summary["rejected_prompts"] += [{"file": str(path), **r} for r in rejects]
        items = [(e["prompt"], e.get("seed", seed + e["index"]),
                  out_dir / job.name / e.get("name", f"{e['index']:05d}")) for e in entries]
    else:
        prompt = job.prompt if job.mode == "text_to_image" else None
        items = [(prompt, seed + i, out_dir / (job.name if job.count == 1 else f"{job.name}_{i:03d}"))
                 for i in range(job.count)]
    for start in range(0, len(items), job.batch_size):
        group = items[start:start + job.batch_size]
        group_seed = group[0][1]
        settings = [{**common, "prompt": p or "", "seed": group_seed, "direction": direction.name, "size": size,
                     "patches": list(grid.size), "batch": {"size": len(group), "row": r}}
                    for r, (p, _, _) in enumerate(group)]
        if not _mine(summary):
            continue
        if all(_done(beside(stem, ".json"), st) for (_, _, stem), st in zip(group, settings)):
            summary["skipped"] += len(group)
            continue
        started = time.perf_counter()
        stats = s.image(grid, direction, [stem for _, _, stem in group], [p for p, _, _ in group], sampling,
                        group_seed, where)
        for (_, _, stem), st in zip(group, settings):
            _write_sidecar(beside(stem, ".json"), st, stats, time.perf_counter() - started)
            summary["written"].append(str(beside(stem, ".png")))


def _mine(summary: dict) -> bool:
    """Units of work (one output group each) go round-robin to the launcher's ranks."""
    unit = summary["units"]
    summary["units"] += 1
    return summary["ranks"].owns(unit)


def _emit(output: Path, settings: dict, summary: dict, make) -> None:
    """Make one output unless its JSON already records the same settings; then write the JSON."""
    if not _mine(summary):
        return
    sidecar = output.with_suffix(".json")
    if _done(sidecar, settings):
        summary["skipped"] += 1
        return
    started = time.perf_counter()
    stats = make()
    _write_sidecar(sidecar, settings, stats, time.perf_counter() - started)
    summary["written"].append(str(output))


def _write_sidecar(path: Path, settings: dict, stats: dict, seconds: float) -> None:
    # Top-level copies of the main settings for readers (the evaluation stage reads "prompt").
    atomic.write_json(path, {**settings, "settings": settings, "stats": stats, "seconds": round(seconds, 3)})


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
    out_dir = cfg.resolve(sec.out_dir) if sec.out_dir else cfg.run_dir / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_canvases(out_dir) + atomic.remove_stale_temporaries(out_dir)
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
        run_job(sampler, job, sec.jobs.index(job), out_dir, summary)
    seconds = time.perf_counter() - started
    summary.pop("ranks")
    marker = ".done.json" if ranks.world_size == 1 else f".done-rank{ranks.rank}.json"
    atomic.mark_done(out_dir / marker, {**summary, "seconds": round(seconds, 2), "device": str(sampler.device)})
    log.info("stage 70 done: %d outputs written, %d already there, %d prompt lines rejected, %.1f s on %s -> %s",
             len(summary["written"]), summary["skipped"], len(summary["rejected_prompts"]), seconds,
             sampler.device, out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
