"""Stage 20: Mask R-CNN object filter (LHQ-V) -> filter_stats.parquet and kept.parquet in data/videos/.

The paper ran "a pretrained Mask R-CNN to remove the videos that likely contain objects" (120k
Pexels videos -> 40k kept) and says nothing more; the choices here:

- Detector: torchvision `maskrcnn_resnet50_fpn` or `maskrcnn_resnet50_fpn_v2`, built with
  weights=None, weights_backbone=None and filled from a local state-dict file (the COCO files
  `maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth` / `maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth`) read
  with `torch.load(..., weights_only=True)`. detectron2 is used instead when it is importable and
  `detectron2_config` names its YAML config (backend auto); its weights must then be a `.pth`
  state dict of tensors (model-zoo `.pkl` files need full pickle, which is refused).
- K frames per clip (`frames_per_clip`, evenly spaced over the clip) go through the detector.
  Every detection with score >= `record_min_score` (the model's own floor) is recorded with its
  class name and mask area (fraction of the frame, mask probability > 0.5).
- The rule (section `rule`): a frame is flagged when it has a detection of a counted class
  (`classes`, COCO names; empty = every class) with score >= `score_threshold` and mask area >=
  `min_mask_area`. A clip is dropped when the fraction of flagged frames >= `drop_flagged_fraction`
  (reason objects_in_frames), or when any counted detection has score >= `drop_any_score` (reason
  confident_object). A clip that cannot be decoded is dropped (reason unreadable).
- Re-tuning: the recorded detections are kept in filter_stats.parquet next to the per-frame
  statistics the rule produces (n_detections, max_score, max_mask_area), so `--retune` re-applies
  a changed rule (any thresholds >= `record_min_score`, other classes) without the detector.
- No weights configured: the stage says so and writes kept.parquet = every clip, with
  `object_filter: unfiltered` (filtered runs write `passed`).
- The video train/test split is made here, on the kept clips (`split`, pipeline/curation/split.py):
  by source video, so every clip of a video is on one side; deterministic from the ids alone.
  Default: 10% of the videos held out (salt "lhqv"); the paper gives no split for LHQ-V.

Work follows the chunk protocol of `pipeline.curation.chunked`: chunk k of clips.parquet belongs to rank
k % WORLD_SIZE and writes `filter_chunks/chunk-NNNNNN.parquet` (the detections) and last its
done-marker (fingerprint: the chunk's clips and the detector settings, not the rule). Rank 0 merges
in clip order and applies the rule. Uses CUDA (cuda:LOCAL_RANK) when available.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from pipeline import atomic
from pipeline.config import ConfigError, load_config, to_dict
from pipeline.curation import chunked, split
from pipeline.curation.chunked import fingerprint
from pipeline.curation.detectors import Detection, Detectron2MaskRCNN, TorchvisionMaskRCNN
from pipeline.errors import entry_point
from pipeline.formats.manifest import CLIP_COLUMNS, read_rows, write_rows
from pipeline.formats.video_io import VideoError, read_frames_at
from pipeline.ranks import RankInfo, pick_device, rank_info

log = logging.getLogger("object_filter")

ARCHITECTURES = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
# Settings that do not change the recorded detections (kept out of chunk fingerprints and the detector cache).
NOT_DETECTOR = ("rule", "split", "chunk_size", "merge_timeout_s", "batch_size", "clips", "output_dir")
DETECTION_COLUMNS = ("id", "path", "frame_times", "det_frame", "det_score", "det_label", "det_area", "error")


@dataclass
class RuleConfig:
    score_threshold: float = 0.5
    min_mask_area: float = 0.005
    classes: list[str] = field(default_factory=list)
    drop_flagged_fraction: float = 0.5
    drop_any_score: float | None = 0.95

    def __post_init__(self):
        if not 0 <= self.score_threshold <= 1 or not 0 <= self.min_mask_area <= 1:
            raise ValueError("rule.score_threshold and rule.min_mask_area must lie in [0, 1]")
        if self.drop_flagged_fraction < 0 or (self.drop_any_score is not None and not 0 <= self.drop_any_score <= 1):
            raise ValueError("rule.drop_flagged_fraction must be >= 0 and rule.drop_any_score in [0, 1] or null")


@dataclass
class FilterConfig:
    weights: str | None = None  # Mask R-CNN state dict (.pth); null = no filtering
    architecture: Literal["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"] = "maskrcnn_resnet50_fpn"
    backend: Literal["auto", "torchvision", "detectron2"] = "auto"
    detectron2_config: str | None = None
    num_classes: int = 91
    min_size: int = 800  # torchvision's resize of the shorter side (its default)
    max_size: int = 1333
    record_min_score: float = 0.05
    max_detections: int = 100  # per frame (torchvision's box_detections_per_img)
    proposals: int = 1000  # region proposals kept per frame (rpn_post_nms_top_n_test); cost grows with it
    frames_per_clip: int = 3
    batch_size: int = 8
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    rule: RuleConfig = field(default_factory=RuleConfig)
    # train/test by video; when given, the keys replace this default as a whole (split.SplitConfig)
    split: split.SplitConfig = field(default_factory=lambda: split.SplitConfig(test_fraction=0.1, salt="lhqv"))
    chunk_size: int = 256
    merge_timeout_s: float = 3600.0
    clips: str = "data/videos/clips.parquet"  # relative to run_dir
    output_dir: str = "data/videos"

    def __post_init__(self):
        if min(self.frames_per_clip, self.batch_size, self.chunk_size, self.max_detections, self.proposals) < 1:
            raise ValueError("need frames_per_clip, batch_size, chunk_size, max_detections, proposals >= 1")
        if self.num_classes < 2:
            raise ValueError("num_classes must be >= 2 (background + one class)")
        if not 0 <= self.record_min_score <= 1:
            raise ValueError("record_min_score must lie in [0, 1]")


# ---------------------------------------------------------------- the rule (pure; tested on crafted input)



@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str  # "" when kept
    n_detections: list[int]  # per frame: counted detections (class, score and area rules)
    max_score: list[float]  # per frame: best score of a counted class (any area; 0 when none)
    max_mask_area: list[float]  # per frame: largest mask of a counted class above the score threshold
    flagged_fraction: float
    top_score: float


def decide(frames: Sequence[Sequence[Detection]], rule: RuleConfig) -> Decision:
    """Apply the rule to one clip's detections (one list per sampled frame)."""
    counted = set(rule.classes)
    n, best, area = [], [], []
    for dets in frames:
        mine = [d for d in dets if not counted or d[1] in counted]
        confident = [d for d in mine if d[0] >= rule.score_threshold]
        n.append(sum(1 for d in confident if d[2] >= rule.min_mask_area))
        best.append(max((d[0] for d in mine), default=0.0))
        area.append(max((d[2] for d in confident), default=0.0))
    flagged = sum(1 for c in n if c > 0) / len(frames) if len(frames) else 0.0
    top = max(best, default=0.0)
    reason = ""
    if rule.drop_any_score is not None and top >= rule.drop_any_score and top > 0:
        reason = "confident_object"
    elif len(frames) and flagged >= rule.drop_flagged_fraction and flagged > 0:
        reason = "objects_in_frames"
    return Decision(keep=not reason, reason=reason, n_detections=n, max_score=best, max_mask_area=area,
                    flagged_fraction=flagged, top_score=top)


def frames_of(row: dict) -> list[list[Detection]]:
    """A stats row's recorded detections regrouped per sampled frame."""
    out: list[list[Detection]] = [[] for _ in row["frame_times"] or []]
    for f, s, lab, a in zip(row["det_frame"] or [], row["det_score"] or [], row["det_label"] or [],
                            row["det_area"] or []):
        out[int(f)].append((float(s), str(lab), float(a)))
    return out


def apply_rule(rows: list[dict], rule: RuleConfig, floor: float) -> list[dict]:
    """Stats rows with the rule's per-frame statistics and decision columns (re)computed."""
    for name, value in (("score_threshold", rule.score_threshold), ("drop_any_score", rule.drop_any_score)):
        if value is not None and value < floor:
            raise ConfigError(f"filter.rule.{name} = {value} is below the score floor {floor} the detections "
                              "were recorded with; lower filter.record_min_score and re-run the detector")
    out = []
    for row in rows:
        if row.get("error"):
            d = Decision(False, "unreadable", [], [], [], 0.0, 0.0)
        else:
            d = decide(frames_of(row), rule)
        out.append({**{k: row[k] for k in DETECTION_COLUMNS}, "n_detections": d.n_detections,
                    "max_score": d.max_score, "max_mask_area": d.max_mask_area,
                    "flagged_fraction": d.flagged_fraction, "top_score": d.top_score, "keep": d.keep,
                    "reason": d.reason, "record_min_score": floor})
    return out


# ---------------------------------------------------------------- detectors

def sample_times(frames: int, fps: float, k: int) -> list[float]:
    """k frame times spread evenly over a clip of `frames` frames (all of them when k >= frames)."""
    if k >= frames:
        idx = list(range(frames))
    elif k == 1:
        idx = [frames // 2]
    else:
        idx = sorted({round(i * (frames - 1) / (k - 1)) for i in range(k)})
    return [i / fps for i in idx]


_LAST_DETECTOR: dict[tuple, object] = {}  # the most recently built detector, by its settings


def build_detector(cfg: FilterConfig, weights: Path, resolve, local_rank: int = 0):
    """The configured detector; a second call with the same settings and weights file reuses it."""
    st = weights.stat()
    key = (str(weights), st.st_size, st.st_mtime_ns, str(pick_device(cfg.device, local_rank, "filter.device")),
           json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_DETECTOR}, sort_keys=True))
    if key not in _LAST_DETECTOR:
        detector = _build_detector(cfg, weights, resolve, local_rank)
        _LAST_DETECTOR.clear()
        _LAST_DETECTOR[key] = detector
    return _LAST_DETECTOR[key]


def _build_detector(cfg: FilterConfig, weights: Path, resolve, local_rank: int = 0):
    use_d2 = cfg.backend == "detectron2" or (cfg.backend == "auto" and cfg.detectron2_config)
    if use_d2:
        try:
            import detectron2  # noqa: F401
        except ImportError:
            if cfg.backend == "detectron2":
                raise ConfigError("filter.backend is detectron2 but detectron2 is not installed") from None
            use_d2 = False
            log.info("detectron2 is not installed; using torchvision's %s", cfg.architecture)
    device = pick_device(cfg.device, local_rank, "filter.device")
    if use_d2:
        if not cfg.detectron2_config:
            raise ConfigError("filter.backend detectron2 needs filter.detectron2_config (its model YAML)")
        log.info("detector: detectron2 %s on %s", cfg.detectron2_config, device)
        return Detectron2MaskRCNN(resolve(cfg.detectron2_config), weights, device, score_floor=cfg.record_min_score,
                                  max_detections=cfg.max_detections, proposals=cfg.proposals)
    log.info("detector: torchvision %s on %s", cfg.architecture, device)
    return TorchvisionMaskRCNN(cfg.architecture, weights, device, num_classes=cfg.num_classes,
                               min_size=cfg.min_size, max_size=cfg.max_size, score_floor=cfg.record_min_score,
                               max_detections=cfg.max_detections, proposals=cfg.proposals)


def detect_clips(detector, clips: Sequence[dict], k: int, batch_size: int, progress=lambda n: None) -> list[dict]:
    """Detections for K sampled frames of each clip (frames of several clips batched together)."""
    rows: list[dict] = []
    pending: list[tuple[int, int, np.ndarray]] = []  # (row index, frame index, pixels)

    def flush():
        if not pending:
            return
        found = detector.detect([p[2] for p in pending])
        for (r, fi, _), dets in zip(pending, found):
            for score, label, area in dets:
                row = rows[r]
                row["det_frame"].append(fi)
                row["det_score"].append(score)
                row["det_label"].append(label)
                row["det_area"].append(area)
        progress(len(pending))
        pending.clear()

    for clip in clips:
        times = sample_times(int(clip["frames"]), float(clip["fps"]), k)
        row = {"id": clip["id"], "path": clip["path"], "frame_times": times, "det_frame": [], "det_score": [],
               "det_label": [], "det_area": [], "error": ""}
        rows.append(row)
        try:
            frames = read_frames_at(clip["path"], times)
        except (VideoError, OSError) as e:
            row["error"] = str(e)
            continue
        for fi, f in enumerate(frames):
            pending.append((len(rows) - 1, fi, f))
            if len(pending) >= batch_size:
                flush()
    flush()
    return rows


# ---------------------------------------------------------------- the stage

@dataclass
class Outputs:
    out_dir: Path

    def __post_init__(self):
        self.stats = self.out_dir / "filter_stats.parquet"  # detections and per-frame statistics
        self.kept = self.out_dir / "kept.parquet"
        self.marker = self.out_dir / "filter.done"


def run(cfg: FilterConfig, run_dir: Path, resolve, ranks: RankInfo | None = None, merge_only: bool = False,
        retune: bool = False) -> dict:
    ranks = ranks or rank_info()
    t0 = time.monotonic()
    out = Outputs(run_dir / cfg.output_dir)
    if retune:
        return _retune(cfg, out, run_dir, t0)
    clips = read_rows(run_dir / cfg.clips, CLIP_COLUMNS)
    if cfg.weights is None:
        return _unfiltered(out, clips, ranks, cfg.split)
    weights = resolve(cfg.weights)
    if not weights.is_file():
        raise ConfigError(f"filter.weights: Mask R-CNN weights not found: {weights}")
    st = weights.stat()
    detector_fp = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_DETECTOR}
    detector_fp["weights"] = [str(weights), st.st_size, st.st_mtime_ns]
    chunks, plan = chunked.plan_chunks(clips, cfg.chunk_size, detector_fp, "clips", lambda c: (c["id"], c["path"]),
                                       out.out_dir / "filter_chunks", "object filter", log, ranks, "clip")
    if not merge_only:
        todo = plan.todo()
        if todo:
            _detect_chunks(cfg, plan, chunks, todo, build_detector(cfg, weights, resolve, ranks.local_rank), ranks)
    if not ranks.is_main and not merge_only:
        return {"chunks": len(chunks)}
    plan.wait(0.0 if merge_only else cfg.merge_timeout_s)
    rows = plan.read_all()
    plan.remove_stale()
    return _write_decisions(out, clips, rows, cfg, cfg.record_min_score, plan.merged_fingerprint, t0)


def _detect_chunks(cfg: FilterConfig, plan: chunked.ChunkPlan, chunks, todo: list[int], detector,
                   ranks: RankInfo) -> None:
    n_clips = sum(len(chunks[k]) for k in todo)
    frames, t1 = 0, time.monotonic()
    with tqdm(total=n_clips * cfg.frames_per_clip, desc="object filter", unit="frame", mininterval=1.0,
              file=sys.stderr) as bar:
        for k in todo:
            plan.start(k)
            rows = detect_clips(detector, chunks[k], cfg.frames_per_clip, cfg.batch_size, bar.update)
            write_rows(plan.rows(k), rows, DETECTION_COLUMNS)
            plan.finish(k, {"clips": len(rows)})
            frames += sum(len(r["frame_times"]) for r in rows if not r["error"])
    dt = time.monotonic() - t1
    log.info("object filter rank %d/%d: %d frame(s) of %d clip(s) through the detector in %.1f s "
             "(%.2f frames/s)", ranks.rank, ranks.world_size, frames, n_clips, dt, frames / dt if dt > 0 else 0.0)


def _write_decisions(out: Outputs, clips: list[dict], rows: list[dict], cfg: FilterConfig, floor: float,
                     detections_fp: str, t0: float) -> dict:
    rule = cfg.rule
    want = fingerprint([detections_fp, dataclasses.asdict(rule), dataclasses.asdict(cfg.split)])
    summary = chunked.already_merged(out.marker, want, (out.stats, out.kept))
    if summary is not None:
        log.info("decisions already written for these detections and this rule (%s); not rewritten", out.kept)
        summary_line(summary, time.monotonic() - t0)
        return summary
    stats = apply_rule(rows, rule, floor)
    keep = {r["id"] for r in stats if r["keep"]}
    kept = split.apply_by_video([{**c, "object_filter": "passed"} for c in clips if c["id"] in keep], cfg.split)
    write_rows(out.stats, stats, DETECTION_COLUMNS)
    write_rows(out.kept, kept, CLIP_COLUMNS)
    reasons = Counter(r["reason"] for r in stats if not r["keep"])
    summary = {"fingerprint": want, "detections": detections_fp, "mode": "filtered", "seen": len(stats),
               "kept": len(kept), "dropped": dict(sorted(reasons.items())),
               "frames": sum(len(r["frame_times"]) for r in stats), "split": _split_counts(kept)}
    atomic.mark_done(out.marker, summary)
    summary_line(summary, time.monotonic() - t0)
    return summary


def _retune(cfg: FilterConfig, lay: Outputs, run_dir: Path, t0: float) -> dict:
    """Re-apply the (changed) rule to the recorded detections; the detector is not built."""
    rows = read_rows(lay.stats, DETECTION_COLUMNS)
    floors = {r["record_min_score"] for r in rows}
    floor = max(floors) if floors else cfg.record_min_score
    clips = read_rows(run_dir / cfg.clips, CLIP_COLUMNS)
    if [c["id"] for c in clips] != [r["id"] for r in rows]:
        raise ConfigError(f"{run_dir / cfg.clips} lists other clips than {lay.stats} (ingest ran again since the "
                          "detector did): run the filter stage without --retune")
    marker = atomic.read_json(lay.marker) if lay.marker.is_file() else {}
    log.info("retune: re-applying the rule %s to the detections of %d clip(s) in %s",
             json.dumps(dataclasses.asdict(cfg.rule), sort_keys=True), len(rows), lay.stats)
    return _write_decisions(lay, clips, rows, cfg, floor, marker.get("detections", fingerprint(rows)), t0)


def _unfiltered(lay: Outputs, clips: list[dict], ranks: RankInfo, split_cfg: split.SplitConfig) -> dict:
    if not ranks.is_main:
        log.info("object filter: skipped (no weights); rank %d has nothing to do", ranks.rank)
        return {"mode": "unfiltered"}
    log.warning("object filter: SKIPPED, filter.weights is not set (no Mask R-CNN weights configured); "
                "kept.parquet lists all %d clip(s), marked object_filter=unfiltered", len(clips))
    kept = split.apply_by_video([{**c, "object_filter": "unfiltered"} for c in clips], split_cfg)
    write_rows(lay.kept, kept, CLIP_COLUMNS)
    summary = {"mode": "unfiltered", "seen": len(clips), "kept": len(clips), "dropped": {}, "frames": 0,
               "split": _split_counts(kept)}
    atomic.mark_done(lay.marker, summary)
    return summary


def _split_counts(clips: list[dict]) -> dict:
    """Clips and videos on each side of the split."""
    out = {}
    for side in ("train", "test", "unused"):
        mine = [c for c in clips if c["split"] == side]
        out[side] = {"clips": len(mine), "videos": len({c.get("video_id") or c["source"] for c in mine})}
    return out


def summary_line(s: dict, seconds: float) -> None:
    log.info("object filter: seen %d clips, kept %d, dropped %d %s, %d frame(s) judged, split %s, %.1f s",
             s["seen"], s["kept"], sum(s["dropped"].values()), json.dumps(s["dropped"]), s["frames"],
             json.dumps(s.get("split", {})), seconds)


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = chunked.stage_parser("pipeline.curation.object_filter", __doc__, "filter",
                              "only merge finished chunks and apply the rule")
    ap.add_argument("--retune", action="store_true",
                    help="re-apply filter.rule to filter_stats.parquet without running the detector")
    args = ap.parse_args(argv)
    chunked.setup_logging()
    run_cfg = load_config(args.config)
    cfg = run_cfg.section("filter", FilterConfig)
    clips = run_cfg.run_dir / cfg.clips
    if not args.retune and not clips.is_file():
        if not run_cfg.has("ingest_videos"):
            log.info("object filter: skipped, the config %s has no videos (no `ingest_videos` section)",
                     run_cfg.path)
            return 0
        raise ConfigError(f"{clips}: no clip manifest; run stage 15 (ingest_videos) first")
    log.info("settings: %s", json.dumps(to_dict(cfg), sort_keys=True))
    run(cfg, run_cfg.run_dir, run_cfg.resolve, merge_only=args.merge_only, retune=args.retune)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
