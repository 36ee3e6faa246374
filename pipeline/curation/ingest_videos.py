"""Stage 15: video ingest (LHQ-V) -> run_dir/data/videos/clips/, clips.parquet, rejects.parquet.

Config section `ingest_videos`:

    ingest_videos:
      sources:                      # one or more, ingested in this order
        - kind: folder              # folder | urls | pexels
          path: /data/pexels_raw    # folder (recursive), URL list file, or Pexels JSON export
          name: ""                  # namespace for ids when several sources are combined
      extensions: [mp4, mov, m4v, mkv, webm, avi]   # folder: which files are videos
      fps: 5.0                      # the paper: clips at 5 fps
      frames: 5                     # frames per clip (the paper: 1024 x 1024 x 5)
      size: 1024                    # clip side in pixels
      min_side: 1024                # shorter displayed side below this -> rejected as too_small
      crop: center                  # center | random (seeded per clip id; recorded as `crop`)
      max_clips_per_video: 0        # 0 = every whole clip of the video
      variable_fps: resample        # resample (by timestamp) | reject
      pexels_pick: smallest_sufficient   # or largest: which of a record's video_files to fetch
      crf: 18                       # x264 quality of the written clips
      video_timeout_s: 1800         # wall-clock limit per video (then rejected as timeout)
      workers: 2                    # processes; a decoder crash loses one video, not the run
      chunk_size: 16                # videos per resumable unit of work
      merge_timeout_s: 3600         # how long rank 0 waits for the other ranks' chunks
      download: {timeout_s: 60, retries: 3, max_bytes: 4294967296, backoff_s: 1.0, total_timeout_s: 3600}
      output_dir: data/videos       # relative to run_dir

Sources: `folder` scans recursively for the configured extensions; `urls` is a text file with one
URL per line (# comments allowed); `pexels` is a Pexels API export (a JSON list of video records,
an object with a `videos` list, or JSON lines) with records `id, width, height, duration, url,
video_files[{quality, file_type, width, height, fps, link}]`: of the files whose shorter side is
at least `min_side` the smallest is fetched (`smallest_sufficient`: clips are `size` pixels, so
more only costs bandwidth) or the largest; a record with none, or shorter than one clip, is
rejected before any download. Downloads go to `raw/<id><ext>` through `pipeline.curation.download`.

Per video: probe, checks (reasons below), then the video resampled to `fps` by timestamp
(`pipeline.formats.video_io`: constant and variable frame rates alike, rotation applied) is cut into
consecutive, non-overlapping clips of `frames` frames starting at 0 s. Each clip is the largest
centred (or seeded random) square of the displayed frame resized to `size` (bicubic), written
with `write_mp4` to `clips/<video id>/<clip id>.mp4`. A video that fails midway keeps no clips.
Reject reasons: empty_file, not_a_video, corrupt, truncated, no_frames, no_video_stream,
audio_only, unsupported_rotation, variable_frame_rate, too_small, too_short, decode_error,
timeout, download_failed, bad_record, no_suitable_file, duplicate_id, worker_crashed,
internal_error.

Sharding, resume and merge follow the chunk protocol of `pipeline.curation.chunked`: chunk k of the sorted
video list belongs to rank k % WORLD_SIZE and writes `chunks/chunk-NNNNNN.parquet` (clips),
`.rejects.parquet` and last its done-marker, whose fingerprint covers the chunk's videos and
every setting that changes the output. Rank 0 merges the chunks in order, so the outputs are
byte-identical whatever the number of ranks or interruptions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import sys
import time
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from pipeline import lifeline
from pipeline.config import ConfigError
from pipeline.curation import chunked
from pipeline.curation.chunked import DownloadSettings
from pipeline.curation.image_checks import IsolatingPool
from pipeline.errors import WriteError, entry_point
from pipeline.formats.manifest import CLIP_COLUMNS, stable_id
from pipeline.formats.video_io import VideoError, VideoInfo, cut_clips, probe
from pipeline.ranks import RankInfo

log = logging.getLogger("ingest_videos")

REJECT_COLUMNS = ("id", "path", "source", "reason", "detail")


@dataclass
class VideoSource:
    kind: Literal["folder", "urls", "pexels"]
    path: str
    name: str = ""

    def __post_init__(self):
        if not self.path:
            raise ValueError("a source needs a path")


@dataclass
class VideoDownloadSettings(DownloadSettings):
    """The shared download settings with limits for videos (large files, slow servers)."""

    timeout_s: float = 60.0
    max_bytes: int = 4 << 30
    total_timeout_s: float | None = 3600.0


@dataclass
class IngestVideosConfig:
    sources: list[VideoSource] = field(default_factory=list)
    extensions: tuple[str, ...] = ("mp4", "mov", "m4v", "mkv", "webm", "avi")
    fps: float = 5.0
    frames: int = 5
    size: int = 1024
    min_side: int = 1024
    crop: Literal["center", "random"] = "center"
    max_clips_per_video: int = 0
    variable_fps: Literal["resample", "reject"] = "resample"
    pexels_pick: Literal["smallest_sufficient", "largest"] = "smallest_sufficient"
    crf: int = 18
    video_timeout_s: float = 1800.0
    workers: int = 2
    chunk_size: int = 16
    merge_timeout_s: float = 3600.0
    download: VideoDownloadSettings = field(default_factory=VideoDownloadSettings)
    output_dir: str = "data/videos"

    def __post_init__(self):
        if self.fps <= 0 or self.frames < 1 or self.video_timeout_s <= 0:
            raise ValueError(f"need fps > 0, frames >= 1, video_timeout_s > 0 "
                             f"(got {self.fps}, {self.frames}, {self.video_timeout_s})")
        if self.size < 2 or self.size % 2:
            raise ValueError(f"size must be even and >= 2 (H.264 4:2:0), got {self.size}")
        if self.min_side < 1 or self.max_clips_per_video < 0 or self.workers < 0 or self.chunk_size < 1:
            raise ValueError("need min_side >= 1, max_clips_per_video >= 0, workers >= 0, chunk_size >= 1")


@dataclass(frozen=True)
class CutSettings:
    """Everything that changes a video's clips (all of it goes into the chunk fingerprints)."""

    fps: float
    frames: int
    size: int
    min_side: int
    crop: str
    max_clips_per_video: int
    variable_fps: str
    crf: int
    seed: int


# ---------------------------------------------------------------- sources -> videos

@dataclass(frozen=True)
class Video:
    """One video to ingest; every field feeds its chunk's fingerprint."""

    id: str
    kind: str
    source: str  # provenance written to the manifest (file path or URL)
    path: str  # folder: the file itself; urls / pexels: "" until downloaded
    url: str = ""
    stamp: str = ""  # folder: size and mtime of the file
    pre_reject: tuple[str, str] | None = None  # decided while listing


def list_videos(sources: Sequence[VideoSource], resolve: Callable[[str], Path], extensions: Sequence[str],
                min_side: int, min_duration_s: float, pick: str) -> list[Video]:
    """Every video of every source, in source order then source-relative name; ids made unique."""
    videos: list[Video] = []
    for src in sources:
        path = resolve(src.path)
        if src.kind == "folder":
            found = _list_folder(src, path, extensions)
        elif src.kind == "urls":
            found = _list_urls(src, path)
        else:
            found = _list_pexels(src, path, min_side, min_duration_s, pick)
        log.info("source %s %s: %d video(s)", src.kind, path, len(found))
        videos += found
    seen: dict[str, str] = {}
    for i, v in enumerate(videos):
        if v.id in seen:
            videos[i] = dataclasses.replace(v, pre_reject=(
                "duplicate_id", f"{v.source}: same id as {seen[v.id]} (listed twice, or give sources names)"))
        else:
            seen[v.id] = v.source
    return videos


def _vid(src: VideoSource, key: str) -> str:
    return stable_id("vid", f"{src.name}/{key}" if src.name else key)


def _list_folder(src: VideoSource, root: Path, extensions: Sequence[str]) -> list[Video]:
    if not root.is_dir():
        raise ConfigError(f"ingest_videos source folder: not found: {root}")
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    found, ignored = [], 0
    for dirpath, _dirs, files in os.walk(root):
        for fn in files:
            p = Path(dirpath) / fn
            if p.suffix.lower() not in exts:
                ignored += 1
                continue
            rel = p.relative_to(root).as_posix()
            try:
                st = p.stat()
                stamp, pre = f"{st.st_size}:{st.st_mtime_ns}", None
            except OSError as e:
                stamp, pre = "", ("unreadable", f"{p}: {e}")
            found.append((rel, Video(id=_vid(src, rel), kind="folder", source=str(p), path=str(p),
                                     stamp=stamp, pre_reject=pre)))
    if ignored:
        log.info("%s: %d file(s) without a video extension %s ignored", root, ignored, sorted(exts))
    return [v for _, v in sorted(found, key=lambda t: t[0])]


def _http_problem(url: object) -> str | None:
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        return f"{url!r} is not an http(s) URL"
    return None


def _list_urls(src: VideoSource, path: Path) -> list[Video]:
    if not path.is_file():
        raise ConfigError(f"ingest_videos source urls: URL list not found: {path}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        problem = _http_problem(url)
        if problem:
            out.append(Video(id=_vid(src, f"{path}:{n}"), kind="urls", source=f"{path}:{n}", path="",
                             pre_reject=("bad_record", f"{path}:{n}: {problem}")))
        else:
            out.append(Video(id=_vid(src, url), kind="urls", source=url, path="", url=url))
    return out


def read_pexels_records(path: Path) -> list[object]:
    """The records of a Pexels export: a JSON list, an object with `videos`, or JSON lines."""
    if not path.is_file():
        raise ConfigError(f"ingest_videos source pexels: export not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as e:
                    data.append(f"{path}:{n}: not JSON ({e})")
    if isinstance(data, dict):
        data = data.get("videos")
    if not isinstance(data, list):
        raise ConfigError(f"{path}: a Pexels export must be a list of records, {{'videos': [...]}} or JSON lines")
    return data


def pick_pexels_file(record: dict, min_side: int, pick: str) -> dict | None:
    """The video file to download: of those with shorter side >= min_side, the smallest or largest."""
    ok = []
    for f in record.get("video_files") or []:
        if not isinstance(f, dict) or _http_problem(f.get("link")):
            continue
        w, h, ftype = f.get("width"), f.get("height"), str(f.get("file_type") or "video/")
        if not (isinstance(w, int) and isinstance(h, int)) or not ftype.startswith("video/"):
            continue
        if min(w, h) >= min_side:
            ok.append(f)
    if not ok:
        return None
    sign = 1 if pick == "smallest_sufficient" else -1
    return min(ok, key=lambda f: (sign * min(f["width"], f["height"]), sign * f["width"] * f["height"],
                                  f["link"]))


def _list_pexels(src: VideoSource, path: Path, min_side: int, min_duration_s: float, pick: str) -> list[Video]:
    out = []
    for n, rec in enumerate(read_pexels_records(path), 1):
        where = f"{path}#{n}"
        if isinstance(rec, str) or not isinstance(rec, dict) or "id" not in rec:
            detail = rec if isinstance(rec, str) else f"{where}: not a video record with an id"
            out.append(Video(id=_vid(src, where), kind="pexels", source=where, path="",
                             pre_reject=("bad_record", detail)))
            continue
        vid = _vid(src, f"pexels:{rec['id']}")
        page = str(rec.get("url") or where)
        duration = rec.get("duration")
        chosen = pick_pexels_file(rec, min_side, pick)
        pre = None
        if isinstance(duration, (int, float)) and duration < min_duration_s:
            pre = ("too_short", f"{page}: {duration} s, one clip needs {min_duration_s:.3f} s")
        elif chosen is None:
            sizes = sorted({(f.get("width"), f.get("height")) for f in rec.get("video_files") or []
                            if isinstance(f, dict)}, key=str)
            pre = ("no_suitable_file", f"{page}: no http(s) video file with shorter side >= {min_side} "
                                       f"among {sizes}")
        out.append(Video(id=vid, kind="pexels", source=chosen["link"] if chosen else page, path="",
                         url=chosen["link"] if chosen else "", pre_reject=pre))
    return out


# ---------------------------------------------------------------- one video (runs in a worker)

def process_video(video: Video, cut: CutSettings, dl: VideoDownloadSettings, out_dir: str,
                  timeout_s: float, stage_pid: int | None = None) -> dict:
    """One video -> {"clips": [rows], "reject": row or None}. Never raises."""
    if stage_pid is not None:
        _die_with_stage(stage_pid)
    out = Path(out_dir)
    clip_dir = out / "clips" / video.id
    origin = video.path or video.url or video.source
    try:
        if video.pre_reject is not None:
            return _reject(video, origin, *video.pre_reject)
        local = Path(video.path) if video.path else _download(video, out / "raw", dl)
        if isinstance(local, tuple):
            return _reject(video, origin, *local)
        if clip_dir.exists():  # clips of a run killed midway, or made with other settings
            shutil.rmtree(clip_dir)
        try:
            info = probe(local)
            problem = check_video(info, cut)
            if problem:
                return _reject(video, str(local), *problem)
            rows = cut_video(video, local, info, cut, clip_dir, time.monotonic() + timeout_s)
        except VideoError as e:
            shutil.rmtree(clip_dir, ignore_errors=True)
            return _reject(video, str(local), e.kind, str(e))
        if not rows:
            return _reject(video, str(local), "too_short", f"{local}: fewer than {cut.frames} frames at "
                                                           f"{cut.fps} fps ({info.duration_s:.3f} s)")
        return {"clips": rows, "reject": None}
    except WriteError:  # a full or read-only disk is no fault of the video: the stage stops and says so
        shutil.rmtree(clip_dir, ignore_errors=True)
        raise
    except Exception as e:  # a bug on one odd file must not stop the others; listed with the error
        shutil.rmtree(clip_dir, ignore_errors=True)
        return _reject(video, origin, "internal_error", traceback.format_exception_only(type(e), e)[-1].strip())


def _die_with_stage(stage_pid: int) -> None:
    """Make a worker process die with the stage process that started it (pipeline.lifeline).

    Workers write clip files. If the stage is SIGKILLed, an orphaned worker would go on writing
    into the run folder while a re-run rewrites the same video: the worker ends instead.
    """
    if os.getpid() != stage_pid:  # workers: 0 runs the items in the stage process itself
        lifeline.bind(parent=stage_pid)


def _reject(video: Video, path: str, reason: str, detail: str) -> dict:
    return {"clips": [], "reject": {"id": video.id, "path": path, "source": video.source, "reason": reason,
                                    "detail": detail}}


def _download(video: Video, raw_dir: Path, dl: VideoDownloadSettings) -> Path | tuple[str, str]:
    from pipeline.curation.download import DownloadError, download

    ext = os.path.splitext(urllib.parse.urlsplit(video.url).path)[1].lower()
    dest = raw_dir / f"{video.id}{ext if ext.isascii() and 1 < len(ext) <= 5 else '.video'}"
    try:
        return download(video.url, dest, timeout_s=dl.timeout_s, retries=dl.retries, max_bytes=dl.max_bytes,
                        backoff_s=dl.backoff_s, total_timeout_s=dl.total_timeout_s)
    except DownloadError as e:
        return "download_failed", str(e)


def check_video(info: VideoInfo, cut: CutSettings) -> tuple[str, str] | None:
    """(reason, detail) when the probed video cannot give clips, else None."""
    p = info.path
    if not info.has_video:
        if info.has_audio:
            return "audio_only", f"{p}: audio only, no video stream"
        return "no_video_stream", f"{p}: no video stream"
    if info.truncated:
        return "truncated", f"{p}: truncated (the index announces more frames than the file holds; " \
                            f"{info.frame_count} present)"
    if not info.rotation_supported:
        return "unsupported_rotation", f"{p}: display matrix rotates by {info.rotation} degrees" + \
            (" and mirrors" if info.mirrored else "")
    if info.variable_fps and cut.variable_fps == "reject":
        return "variable_frame_rate", f"{p}: variable frame rate (average {info.fps:.3f} fps)"
    if min(info.width, info.height) < cut.min_side:
        return "too_small", f"{p}: {info.width}x{info.height}, shorter side below {cut.min_side}"
    need = cut.frames / cut.fps
    if info.duration_s + 1e-6 < need:
        return "too_short", f"{p}: {info.duration_s:.3f} s, one clip of {cut.frames} frames at " \
                            f"{cut.fps} fps needs {need:.3f} s"
    return None


def cut_video(video: Video, local: Path, info: VideoInfo, cut: CutSettings, clip_dir: Path,
              deadline: float) -> list[dict]:
    """The clips of one video as manifest rows (see `pipeline.formats.video_io.cut_clips`)."""
    clips = cut_clips(local, info, fps=cut.fps, frames=cut.frames, size=cut.size, crop=cut.crop, seed=cut.seed,
                      clip_id=lambda k: stable_id("clip", f"{video.id}:{k:06d}"), clip_dir=clip_dir,
                      crf=cut.crf, max_clips=cut.max_clips_per_video, deadline=deadline)
    return [{
        "id": c.id, "path": str(c.path), "source": video.source, "start": c.start, "fps": float(cut.fps),
        "frames": cut.frames, "size": cut.size, "caption": "", "split": "", "video_id": video.id,
        "clip_index": c.index, "crop": list(c.crop), "src_width": info.width, "src_height": info.height,
        "src_fps": round(info.fps, 6), "src_rotation": info.rotation, "src_variable_fps": info.variable_fps,
    } for c in clips]


# ---------------------------------------------------------------- the stage

def run(cfg: IngestVideosConfig, run_dir: Path, seed: int, resolve: Callable[[str], Path],
        ranks: RankInfo | None = None, merge_only: bool = False, config_name: str = "config") -> dict:
    """Ingest every source; returns the summary (of the merge on rank 0, of this rank's chunks otherwise)."""
    chunked.require_sources(cfg.sources, config_name, "ingest_videos", "folder, urls or pexels")
    out_dir = run_dir / cfg.output_dir
    cut = CutSettings(fps=cfg.fps, frames=cfg.frames, size=cfg.size, min_side=cfg.min_side, crop=cfg.crop,
                      max_clips_per_video=cfg.max_clips_per_video, variable_fps=cfg.variable_fps,
                      crf=cfg.crf, seed=seed)
    videos = list_videos(cfg.sources, resolve, cfg.extensions, cfg.min_side, cfg.frames / cfg.fps,
                         cfg.pexels_pick)
    chunks, plan = chunked.plan_chunks(videos, cfg.chunk_size, {"cut": dataclasses.asdict(cut), "out": str(out_dir)},
                                       "videos", dataclasses.astuple, out_dir / "chunks", "ingest_videos", log, ranks,
                                       "video")
    target = chunked.MergeTarget(
        rows=out_dir / "clips.parquet", rejects=out_dir / "rejects.parquet", marker=out_dir / "ingest.done",
        row_columns=CLIP_COLUMNS, reject_columns=REJECT_COLUMNS, rows_key="clips", unit="videos",
        nothing_usable=lambda s: (f"no usable video among {s['seen']} (rejected by reason: {s['rejected']}); "
                                  f"the reasons per file are in {out_dir / 'rejects.parquet'}"))
    process = functools.partial(_process_chunks, cfg, plan, target, cut, chunks)
    mine = {"seen": 0, "kept": 0, "clips": 0, "rejected": Counter()}
    return chunked.run_chunks(plan, merge_only, cfg.merge_timeout_s, "videos", process, mine,
                              lambda: chunked.merge_ingest(plan, target))


@entry_point
def main(argv: list[str] | None = None) -> int:
    return chunked.ingest_main(argv, "pipeline.curation.ingest_videos", __doc__, "ingest_videos",
                               IngestVideosConfig, run, log,
                               "ingest_videos: skipped, the config %s has no `ingest_videos` section",
                               "only merge finished chunks (fails naming any that are missing)")


def _process_chunks(cfg: IngestVideosConfig, plan: chunked.ChunkPlan, target: chunked.MergeTarget,
                    cut: CutSettings, chunks, todo: list[int], mine: dict) -> None:
    if not todo:
        return
    total = sum(len(chunks[k]) for k in todo)
    pool = IsolatingPool(min(cfg.workers, total))
    fn = functools.partial(process_video, cut=cut, dl=cfg.download, out_dir=str(plan.folder.parent),
                           timeout_s=cfg.video_timeout_s, stage_pid=os.getpid())
    try:
        with tqdm(total=total, desc="ingest videos", unit="video", mininterval=1.0, file=sys.stderr) as bar:
            for k in todo:
                plan.start(k)
                results = pool.map(fn, chunks[k], on_crash=lambda v: _reject(
                    v, v.path or v.url or v.source, "worker_crashed", "the decoding process died on this video"),
                    progress=lambda: bar.update(1))
                clips = [row for r in results for row in r["clips"]]
                rejected = [r["reject"] for r in results if r["reject"] is not None]
                chunked.save_chunk(plan, target, k, len(results), clips, rejected, mine)
    finally:
        pool.close()


if __name__ == "__main__":
    raise SystemExit(main())
