"""The paper's evaluation protocol (section 4.2): Tables 1-3, one command each, our numbers beside the paper's.

    python -m pipeline.evaluation.protocol table1 --config configs/paper_lhqc.yaml
    python -m pipeline.evaluation.protocol table3 --config configs/paper_lhqc.yaml
    python -m pipeline.evaluation.protocol table2 --config configs/paper_lhqv.yaml
    LAUNCHER="torchrun --nproc_per_node 8" ./run.sh protocol table1 --config my_lhqc.yaml   # sampling on 8 GPUs
    ./run.sh stages 85 --config configs/demo.yaml                 # stage 85: every table the config names

Each table samples exactly what the paper measures, with the sampling stage's own entry point
(pipeline.sampling.sample.run_jobs: sharded round-robin over the launcher's ranks, resumed from the
outputs already written), then rank 0 waits for every rank's share, evaluates each row with the
evaluation stage's metrics (pipeline.evaluation.evaluate), and writes
run_dir/<out_dir>/<table>/<table>.md and .json: the paper's rows with ours under them. A metric whose
weights are not configured is "skipped" with the reason, as in stage 80. Beside the paper's columns
each table reports what needs no external weights: validation bits per token of the renderer on the
held-out token set (teacher-forced, pipeline.training.validate) and sampling speed.

    Table 1  (`table1`) text-to-image: every test caption of the image manifest (the first `count`),
             one image each at the training size and one at 4x its width; Block-FID of both against
             the test images, IS and CLIP-SIM (each image against its own caption) of the first. Block-FID
             reading (`block_fid`): "overlap" (default: blocks at a stride of half a block) or "shifted"
             (images made one block larger, half a block trimmed off every side, blocks without overlap;
             pipeline/evaluation/evaluate.py explains both). Bits per token with the captions and with
             every caption dropped: how much the captions tell the model.
    Table 2  (`table2`) image-to-video: the first frame of each test clip (the clip manifest's test split,
             made by video at stage 20) predicted to `frames` frames (paper: 8 = 1 given + 7), FVD against
             the real test clips of that same length; clips shorter than that are a configuration error
             (cut longer clips at stage 15 and train on their first frames with tokenize.clip_frames).
             Bits per token of the video renderer on the held-out clips, overall and on the predicted frames.
    Table 3  (`table3`) extension: for each side, every test image minus `fraction` of it on that side
             (paper: 1024 x 512 halves) grown back to full size, without and with its caption; Block-FID
             over the generated part only, against the same part of the real test images. Bits per token
             on that part, teacher-forced in the extension's direction after the given part.

Config (top-level section `protocol`; metric weights, reference sets and block size come from the
`evaluate` section, the sampler's settings from `sample`):

    protocol:
      out_dir: protocol                # under run_dir
      manifest: data/images/manifest.parquet
      split: test
      sampling: {}                     # overrides of sample.sampling for every table (e.g. cfg_scale)
      wait_s: 86400                    # how long rank 0 waits for the other ranks' samples
      table1: {count: null, x4: true, block_fid: overlap, batch_size: 8}
      table2: {count: null, frames: 8, clips: data/videos/kept.parquet, one_per_video: true, export_dir: null}
      table3: {count: null, sides: [right, left, down, up], captions: [false, true], fraction: 0.5}

A table left out of the section (or null) is not run; naming it on the command line is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from model.directions import Direction, direction_for_extension
from pipeline import atomic
from pipeline.config import ConfigError, RunConfig, load_config, to_dict
from pipeline.errors import entry_point
from pipeline.evaluation import paper_tables
from pipeline.evaluation.evaluate import EvaluateConfig, evaluate
from pipeline.formats.manifest import CLIP_COLUMNS, IMAGE_MANIFEST, ManifestError, read_rows, write_rows
from pipeline.ranks import pick_device, rank_info
from pipeline.sampling.sample import JobConfig, SampleSection, check_jobs, regrow_boxes, run_jobs

log = logging.getLogger("protocol")

SIDES = ("right", "left", "down", "up")
TABLES = ("table1", "table2", "table3")


@dataclass
class Table1Config:
    count: int | None = None  # test captions used, the first in manifest order (null: all)
    size: tuple[int, int] | None = None  # [H, W] "training size"; null: the test images' size
    x4: bool = True  # also images 4x as wide (the paper's 1024 x 4096)
    block_fid: Literal["overlap", "shifted"] = "overlap"
    metrics: list[str] = field(default_factory=lambda: ["block_fid", "inception_score", "clip_sim"])
    direction: str = "down-right"  # column order: memory flat in the width
    batch_size: int = 8
    sampling: dict = field(default_factory=dict)


@dataclass
class Table2Config:
    count: int | None = None  # test clips used (null: all)
    frames: int = 8  # frames of each measured clip, the given first one included (paper: 8)
    fps: float = 5.0
    clips: str = "data/videos/kept.parquet"  # relative to run_dir
    one_per_video: bool = True  # the first test clip of each test video (clips of one video are alike)
    export_dir: str | None = None  # the video renderer; null: the sample section's
    tokens: str = "tokens/videos/test"  # held-out clips for bits per token, relative to run_dir
    sampling: dict = field(default_factory=dict)


@dataclass
class Table3Config:
    count: int | None = None  # test images used (null: all)
    sides: list[str] = field(default_factory=lambda: list(SIDES))
    captions: list[bool] = field(default_factory=lambda: [False, True])  # the paper's w/o and w/ text rows
    fraction: float = 0.5  # share of each image removed and grown back (paper: 1024 x 512 halves)
    batch_size: int = 8
    sampling: dict = field(default_factory=dict)


@dataclass
class ProtocolSection:
    out_dir: str = "protocol"
    manifest: str = IMAGE_MANIFEST
    split: str = "test"
    sampling: dict = field(default_factory=dict)
    tokens: str = "tokens/images/test"  # held-out images for bits per token, relative to run_dir
    wait_s: float = 86400.0
    table1: Table1Config | None = None
    table2: Table2Config | None = None
    table3: Table3Config | None = None

    def __post_init__(self):
        for name in TABLES:
            t = getattr(self, name)
            if t is not None and t.count is not None and t.count < 1:
                raise ValueError(f"{name}.count must be >= 1 or null (all)")
        if self.table2 is not None and self.table2.frames < 2:
            raise ValueError("table2.frames must be >= 2 (the given frame and at least one predicted)")
        if self.table3 is not None:
            bad = sorted(set(self.table3.sides) - set(SIDES))
            if bad or not self.table3.sides:
                raise ValueError(f"table3.sides must be some of {list(SIDES)}, got {self.table3.sides}")
            if not 0 < self.table3.fraction < 1:
                raise ValueError(f"table3.fraction must lie in (0, 1), got {self.table3.fraction}")


@dataclass
class Row:
    """One evaluation of a table: the samples of one job, some metrics, the column each value fills."""

    key: str  # file name of its evaluation JSON
    job: str  # the sampling job whose outputs it measures
    metrics: dict[str, str]  # metric name -> table column
    method: str  # our row of the table it belongs to
    overrides: dict = field(default_factory=dict)  # EvaluateConfig fields


@dataclass
class Plan:
    name: str
    jobs: list[JobConfig]
    rows: list[Row]
    settings: list[str]
    bits: list[dict]  # {"label", "export", "tokens", "direction", "drop_captions", "select"}
    methods: list[str]
    items: int  # outputs each job makes


# ------------------------------------------------------------------------------ planning


def _test_rows(cfg: RunConfig, path: Path, split: str, what: str) -> list[dict]:
    try:
        rows = [r for r in read_rows(path) if not split or r.get("split") == split]
    except ManifestError as e:
        raise ConfigError(f"{cfg.path}: protocol: {e}") from e
    if not rows:
        raise ConfigError(f"{cfg.path}: protocol: {path} has no {what} with split {split!r}")
    return rows


def _one_size(cfg: RunConfig, rows: list[dict], path: Path) -> int:
    sizes = {int(r["size"]) for r in rows}
    if len(sizes) != 1:
        raise ConfigError(f"{cfg.path}: protocol: {path} mixes sizes {sorted(sizes)}; set protocol.table1.size")
    return sizes.pop()


def _seed(cfg: RunConfig, table: int, job: int) -> int:
    """Each job its own range of item seeds (item i of a job gets seed + i)."""
    return cfg.seed + 1_000_000 * table + 100_000 * job


def _renderer_name(cfg: RunConfig, export: str | None) -> str:
    from pipeline.formats.renderer_io import export_dir, read_config

    folder = cfg.resolve(export) if export else export_dir(cfg)
    try:
        return {"ar": "AR", "nar": "NAR", "pnar": "P-NAR"}[read_config(folder).renderer]
    except Exception:  # noqa: BLE001 - only a label; loading the export later says what is wrong
        return "renderer"


def plan_table1(cfg: RunConfig, p: ProtocolSection, sample: SampleSection, ev: EvaluateConfig) -> Plan:
    t = p.table1
    manifest = cfg.run_dir / p.manifest
    rows = _test_rows(cfg, manifest, p.split, "image")
    h, w = t.size or (_one_size(cfg, rows, manifest),) * 2
    n = min(len(rows), t.count or len(rows))
    block = ev.block_size
    common = dict(mode="batch", prompts_file=str(manifest), split=p.split, limit=t.count, direction=t.direction,
                  batch_size=t.batch_size, sampling={**p.sampling, **t.sampling})
    widths = [("t2i", w)] + ([("t2i-x4", 4 * w)] if t.x4 else [])
    jobs, rows_out = [], []
    label = _renderer_name(cfg, sample.export_dir)
    for k, (name, width) in enumerate(widths):
        if t.block_fid == "shifted":  # one block larger; half a block trimmed off every side
            size, half = (h + block, width + block), block // 2
            over = {"block_stride": block, "generated_region": (half, half, half + width, half + h)}
        else:
            size, over = (h, width), {"block_stride": max(1, block // 2)}
        jobs.append(JobConfig(name=name, size=size, seed=_seed(cfg, 1, k), **common))
        wanted = ["block_fid"] if name == "t2i-x4" else ["block_fid", "inception_score", "clip_sim"]
        metrics = {m: ("block_fid_x4" if name == "t2i-x4" else m) for m in wanted if m in t.metrics}
        if metrics:
            rows_out.append(Row(name, name, metrics, label, over))
    reading = ("overlap: blocks at a stride of half a block" if t.block_fid == "overlap" else
               "shifted: images one block larger, half a block trimmed off every side, blocks without overlap")
    settings = [f"{n} test captions of {manifest} (split {p.split!r}), one image each at {h} x {w} (the training "
                f"size)" + (f" and at {h} x {4 * w} (x4)" if t.x4 else ""),
                f"Block-FID: {block} x {block} blocks, reading '{reading}'; reference: the {p.split} images",
                "CLIP-SIM: each image against its own caption"]
    bits = [{"label": f"{label}, held-out images, own captions", "tokens": p.tokens, "export": sample.export_dir,
             "direction": t.direction, "drop_captions": False, "select": None},
            {"label": f"{label}, held-out images, captions dropped", "tokens": p.tokens,
             "export": sample.export_dir, "direction": t.direction, "drop_captions": True, "select": None}]
    return Plan("table1", jobs, rows_out, settings, bits, [label], n)


def plan_table2(cfg: RunConfig, p: ProtocolSection, sample: SampleSection, ev: EvaluateConfig) -> Plan:
    t = p.table2
    source = cfg.run_dir / t.clips
    rows = _test_rows(cfg, source, p.split, "clip")
    short = sorted({int(r["frames"]) for r in rows if int(r["frames"]) < t.frames})
    if short:
        raise ConfigError(f"{cfg.path}: protocol.table2 measures {t.frames}-frame clips but the {p.split} clips of "
                          f"{source} have {short} frames: cut clips of at least {t.frames} frames at stage 15 "
                          f"(ingest_videos.frames) and train on their first frames (tokenize.clip_frames)")
    if t.one_per_video:  # the first clip of each video, in manifest order
        first: dict[str, dict] = {}
        for r in rows:
            first.setdefault(str(r.get("video_id") or r["source"]), r)
        rows = list(first.values())
    rows = rows[:t.count] if t.count else rows
    n = len(rows)
    # The chosen clips, written once (every rank writes the same bytes, atomically): the sampler's
    # input and FVD's reference, so both sides are exactly these clips.
    clips = cfg.run_dir / p.out_dir / "table2" / "clips.parquet"
    write_rows(clips, rows, CLIP_COLUMNS)
    label = _renderer_name(cfg, t.export_dir or sample.export_dir)
    job = JobConfig(name="i2v", mode="image_to_video", input=str(clips), split=p.split, limit=None,
                    frames=t.frames - 1, fps=t.fps, export_dir=t.export_dir, seed=_seed(cfg, 2, 0),
                    sampling={**p.sampling, **t.sampling})
    over = {"fvd_frames": t.frames, "reference_videos": str(clips), "reference_split": p.split}
    settings = [f"{n} {p.split} clips of {source} (the split is by video)"
                + (", the first of each video" if t.one_per_video else "") + f", listed in {clips}: the first "
                f"frame of each predicted to {t.frames} frames ({t.frames - 1} predicted) at {t.fps:g} fps",
                f"FVD: the first {t.frames} frames of the generated clips against those {n} real clips"]
    video = "right-down-forward"
    bits = [{"label": f"{label}, held-out clips, every frame", "tokens": t.tokens, "export": job.export_dir or
             sample.export_dir, "direction": video, "drop_captions": False, "select": None},
            {"label": f"{label}, held-out clips, predicted frames (after the first)", "tokens": t.tokens,
             "export": job.export_dir or sample.export_dir, "direction": video, "drop_captions": False,
             "select": ("frames_after", 0)}]
    return Plan("table2", [job], [Row("i2v", "i2v", {"fvd": "fvd"}, label, over)], settings, bits, [label], n)


def plan_table3(cfg: RunConfig, p: ProtocolSection, sample: SampleSection, ev: EvaluateConfig) -> Plan:
    t = p.table3
    manifest = cfg.run_dir / p.manifest
    rows = _test_rows(cfg, manifest, p.split, "image")
    size = _one_size(cfg, rows, manifest)
    amount = int(round(size * t.fraction))
    n = min(len(rows), t.count or len(rows))
    label = _renderer_name(cfg, sample.export_dir)
    jobs, rows_out, bits, methods = [], [], [], []
    for c, captions in enumerate(t.captions):
        method = f"{label} {'w/' if captions else 'w/o'} text"
        methods.append(method)
        for k, side in enumerate(t.sides):
            name = f"{side}-{'text' if captions else 'notext'}"
            jobs.append(JobConfig(name=name, mode="extend", input=str(manifest), split=p.split, limit=t.count,
                                  side=side, amount=amount, captions=captions, batch_size=t.batch_size,
                                  seed=_seed(cfg, 3, 10 * c + k), sampling={**p.sampling, **t.sampling}))
            given, generated = regrow_boxes(size, size, side, amount)
            rows_out.append(Row(name, name, {"block_fid": side}, method,
                                {"generated_region": tuple(generated), "reference_region": tuple(generated)}))
            bits.append({"label": f"{method}, {side}: the generated part", "tokens": p.tokens,
                         "export": sample.export_dir, "direction": direction_for_extension(side).name,
                         "drop_captions": not captions, "select": ("pixels", generated)})
    settings = [f"{n} test images of {manifest} (split {p.split!r}), {size} x {size}: {amount} pixels removed on "
                f"each side in turn and grown back (the given part is {size - amount} pixels deep)",
                "Block-FID over the generated part only, against the same part of the test images"]
    return Plan("table3", jobs, rows_out, settings, bits, methods, n)


PLANNERS = {"table1": plan_table1, "table2": plan_table2, "table3": plan_table3}


# ------------------------------------------------------------------------------ running


def _fingerprint(sample: SampleSection, jobs: list[JobConfig]) -> str:
    text = json.dumps([to_dict(dataclasses.replace(sample, jobs=[])), [to_dict(j) for j in jobs]], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def wait_for_ranks(folder: Path, fingerprint: str, world: int, wait_s: float, expected: dict[str, int]) -> None:
    """Rank 0: wait until every rank has marked its share of these jobs done (same fingerprint) and every
    job's folder holds its `expected` outputs (a mark left by an earlier complete run counts only then)."""
    deadline = time.monotonic() + wait_s
    while True:
        missing = []
        for r in range(world):
            marker = folder / f".protocol-rank{r}.json"
            try:
                ok = atomic.read_json(marker).get("fingerprint") == fingerprint
            except (FileNotFoundError, ValueError, AttributeError):
                ok = False
            if not ok:
                missing.append(r)
        short = {job: n for job, n in expected.items() if len(list((folder / job).glob("*.json"))) < n}
        if not missing and not short:
            return
        if time.monotonic() >= deadline:
            raise ConfigError(f"{folder}: ranks {missing} did not finish their samples within {wait_s:g} s "
                              f"(jobs short of outputs: {sorted(short)}); run them again (finished outputs are "
                              "kept), then this command")
        time.sleep(2.0)


def speed(folder: Path) -> dict | None:
    """Sampling speed from the outputs' JSON: seconds per output and generated tokens per second."""
    outputs, seconds, tokens = 0, 0.0, 0
    for path in sorted(folder.glob("*.json")):
        data = atomic.read_json(path)
        outputs += 1
        if data.get("batch", {}).get("row", 0) == 0:  # a batch's time and tokens are recorded by each of its rows
            seconds += float(data["seconds"])
            tokens += int(data["stats"]["tokens_generated"])
    if not outputs or seconds <= 0:
        return None
    return {"outputs": outputs, "seconds_per_output": seconds / outputs, "tokens_per_second": tokens / seconds,
            "seconds": round(seconds, 2)}


def _selector(select, patch_px: tuple[int, int]):
    if select is None:
        return None
    kind, arg = select
    if kind == "frames_after":
        return lambda c: c[2] > arg
    x0, y0, x1, y1 = arg
    ph, pw = patch_px
    return lambda c: y0 <= c[0] * ph and (c[0] + 1) * ph <= y1 and x0 <= c[1] * pw and (c[1] + 1) * pw <= x1


def bits_per_token(cfg: RunConfig, spec: dict, device, cache: dict) -> dict:
    """Held-out bits per token of one renderer on one token set (see pipeline.training.validate)."""
    from pipeline.formats.renderer_io import RendererLoadError, export_dir, load_renderer
    from pipeline.formats.shards import ShardError, TokenSet
    from pipeline.training.validate import validation_bits_per_token

    folder = cfg.resolve(spec["export"]) if spec["export"] else export_dir(cfg)
    tokens = cfg.run_dir / spec["tokens"]
    try:
        if str(folder) not in cache:
            cache[str(folder)] = load_renderer(folder, device)
        renderer, tokenizer = cache[str(folder)]
        ts = TokenSet(tokens)
    except (RendererLoadError, ShardError) as e:
        return {"skipped": str(e)}
    if len(ts) == 0:
        return {"skipped": f"{tokens}: no held-out items"}
    hp, wp, _ = renderer.cfg.patch
    f = ts.meta.downsample
    out = validation_bits_per_token(renderer, ts, Direction.parse(spec["direction"]), 16, tokenizer,
                                    drop_captions=spec["drop_captions"],
                                    select=_selector(spec["select"], (hp * f, wp * f)))
    return {"bits_per_token": out["bits_per_token"], "tokens": out["tokens"], "items": out["items"],
            "direction": out["direction"], "captions": out["captions"], "token_set": str(tokens)}


def run_table(cfg: RunConfig, name: str) -> dict | None:
    """Sample (this rank's share), then on rank 0: wait, evaluate, write the table. Returns its JSON on rank 0."""
    p = cfg.section("protocol", ProtocolSection)
    if getattr(p, name) is None:
        raise ConfigError(f"{cfg.path}: protocol.{name} is not configured (configured: "
                          f"{[t for t in TABLES if getattr(p, t) is not None]})")
    sample = cfg.section("sample", SampleSection)
    ev = cfg.section("evaluate", EvaluateConfig)
    plan = PLANNERS[name](cfg, p, sample, ev)
    folder = cfg.run_dir / p.out_dir / name
    samples = folder / "samples"
    sec = dataclasses.replace(sample, jobs=plan.jobs, out_dir=str(samples))
    check_jobs(sec, f"{cfg.path}: protocol.{name}")
    started = time.time()
    ranks = rank_info()
    log.info("%s: sampling %d job(s) into %s (rank %d of %d)", name, len(plan.jobs), samples, ranks.rank,
             ranks.world_size)
    summary = run_jobs(cfg, sec, plan.jobs, samples)
    fingerprint = _fingerprint(sec, plan.jobs)
    atomic.write_json(samples / f".protocol-rank{ranks.rank}.json", {"fingerprint": fingerprint, **summary})
    if not ranks.is_main:
        return None
    wait_for_ranks(samples, fingerprint, ranks.world_size, p.wait_s, {j.name: plan.items for j in plan.jobs})

    base = ev
    if name != "table2" and ev.reference is None:  # the images of the protocol's own test split
        base = dataclasses.replace(ev, reference=str(cfg.run_dir / p.manifest), reference_split=p.split)
    ours = {m: {"method": m, "values": {}, "skipped": {}} for m in plan.methods}
    evaluations = {}
    for row in plan.rows:
        row_cfg = dataclasses.replace(base, metrics=list(row.metrics), generated=str(samples / row.job),
                                      **row.overrides)
        result = evaluate(cfg, row_cfg, out=folder / "eval" / f"{row.key}.json")
        evaluations[row.key] = str(folder / "eval" / f"{row.key}.json")
        for metric, column in row.metrics.items():
            if metric in result["metrics"]:
                ours[row.method]["values"][column] = result["metrics"][metric]["value"]
            else:
                ours[row.method]["skipped"][column] = result["skipped"][metric]
    device, cache = pick_device(ev.device, key="evaluate.device"), {}
    bits = [{**b, "result": bits_per_token(cfg, b, device, cache)} for b in plan.bits]
    speeds = {j.name: speed(samples / j.name) for j in plan.jobs}
    extra = _extra_markdown(bits, speeds)
    markdown, table = paper_tables.render(name, list(ours.values()), plan.settings, extra)
    table.update(bits_per_token=[{"label": b["label"], **b["result"]} for b in bits], speed=speeds,
                 evaluations=evaluations, samples=str(samples), seconds=round(time.time() - started, 1),
                 config=str(cfg.path))
    atomic.write_text(folder / f"{name}.md", markdown)
    atomic.write_json(folder / f"{name}.json", table)
    log.info("%s written: %s", name, folder / f"{name}.md")
    return table


def _extra_markdown(bits: list[dict], speeds: dict) -> list[str]:
    lines = ["What this run measures besides the paper's columns (no external weights needed):", "",
             "| held-out bits per token (teacher-forced) | bits/token | tokens |", "|---|---:|---:|"]
    for b in bits:
        r = b["result"]
        lines.append(f"| {b['label']} | " + (f"{r['bits_per_token']:.4f} | {r['tokens']} |" if "skipped" not in r
                                              else f"skipped: {r['skipped']} | |"))
    lines += ["", "| sampling job | outputs | s per output | generated tokens/s |", "|---|---:|---:|---:|"]
    for job, s in speeds.items():
        lines.append(f"| {job} | " + (f"{s['outputs']} | {s['seconds_per_output']:.3f} | {s['tokens_per_second']:.1f} |"
                                      if s else "0 | | |"))
    return lines


@entry_point(user_errors=(ManifestError, ValueError))
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.evaluation.protocol", description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="*", metavar="TABLE",
                    help="table1, table2, table3 (default, or all: every table the config's protocol section names)")
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    unknown = sorted(set(args.tables) - {*TABLES, "all"})
    if unknown:  # checked here: argparse rejects an empty list when nargs="*" has choices
        ap.error(f"unknown table(s) {unknown}; choose from {[*TABLES, 'all']}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    if not cfg.has("protocol"):
        log.info("%s has no protocol section: no table to make", cfg.path)
        return 0
    p = cfg.section("protocol", ProtocolSection)
    every = not args.tables or "all" in args.tables
    names = [t for t in TABLES if getattr(p, t) is not None] if every else args.tables
    for name in names:
        table = run_table(cfg, name)
        if table is not None:
            print((cfg.run_dir / p.out_dir / name / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
