"""Stage 00: the embedded demo data set, procedural landscapes made on the spot (no download).

    python -m pipeline.demo_data.make --config run.yaml      # the stage (section `demo_data`)
    python -m pipeline.demo_data.make --preview sheet.png    # a contact sheet to look at

Writes, under `out_dir` (default run_dir/demo_data):
    images/img_NNNNN.png + images/metadata.jsonl   {"file_name", "caption"} per line (HF imagefolder)
    videos/vid_NNNN.mp4  + videos/metadata.jsonl   {"file_name", "caption", "has_object"} per line
    scenes.jsonl   the ground truth of every file: its Scene, framing, motion and object track
    settings.json  the settings the files were made with;  .done  the done-marker, written last

Choices:
- Every item has its own generator seeded by (seed, kind, index), so an item is the same whether
  it is made in one go or after an interruption, and the first N items do not change when the
  count grows.
- Images are square `image_size` crops (or `image_width` wide) of a scene at a random horizontal
  offset, placed so that the sun or moon is usually in view; the framing therefore varies.
- Videos: the camera pans slowly in `pan_fraction` of them (the others keep still while clouds
  drift and the sun moves); exactly round(object_fraction * videos) of them get a pasted object:
  a bright car, person or boat (the kinds a COCO detector finds) drawn in frame coordinates,
  crossing the view, standing on land or floating on water. `Motion` / `ObjectTrack` in
  scenes.jsonl are the ground truth; `render_video(..., with_object=False)` re-renders a clip
  without its object.
- The stage is small (seconds), so it is not split across ranks: under a multi-process launcher
  rank 0 does all of it and the other ranks return at once.
- Resuming: a file that exists is complete (all writes are atomic) and is kept. When the settings
  differ from those of the files on disk, the old files are removed and everything is made again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline import atomic
from pipeline.config import ConfigError, RunConfig, load_config, to_dict
from pipeline.demo_data import landscape
from pipeline.errors import entry_point
from pipeline.formats.video_io import write_mp4
from pipeline.ranks import rank_info

log = logging.getLogger("make_demo_data")

ObjectKind = Literal["car", "person", "boat"]

SECTION = "demo_data"
GENERATOR_VERSION = 1  # bump when the renderer's output changes, so old files are made again
_IMAGE, _VIDEO, _OBJECTS = 0, 1, 2  # the kind entry of a generator's seed


@dataclass
class DemoDataConfig:
    images: int = 400
    videos: int = 24
    image_size: int = 128  # image height (and width unless image_width is set)
    image_width: int | None = None
    video_size: int = 128  # square frames; must be even (H.264 yuv420p)
    video_frames: int = 20  # raw frames per video (2 s at 10 fps; ingest resamples and cuts clips)
    video_fps: float = 10.0
    object_fraction: float = 0.25  # share of videos with a pasted object (for the object filter)
    pan_fraction: float = 0.6  # share of videos with a panning camera
    # Scene fields fixed for every image (e.g. {time_of_day: day, ground: lake}); the others are drawn as
    # usual. The single-image run lays one such scene out as a wide panorama (configs/single_image.yaml).
    scene: dict = dataclasses.field(default_factory=dict)
    seed: int | None = None  # None: the run's top-level seed
    out_dir: str | None = None  # None: run_dir/demo_data

    def __post_init__(self):
        for name in ("images", "videos"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 16 or (self.image_width is not None and self.image_width < 16):
            raise ValueError(f"image_size/image_width must be >= 16, got {self.image_size}/{self.image_width}")
        if self.video_size < 16 or self.video_size % 2:
            raise ValueError(f"video_size must be even and >= 16 (H.264 yuv420p), got {self.video_size}")
        if self.video_frames < 1 or self.video_fps <= 0:
            raise ValueError(f"need video_frames >= 1 and video_fps > 0, got {self.video_frames}, {self.video_fps}")
        for name in ("object_fraction", "pan_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        fields = {f.name for f in dataclasses.fields(landscape.Scene)} - {"seed"}
        unknown = sorted(set(self.scene) - fields)
        if unknown:
            raise ValueError(f"scene: unknown field(s) {unknown}; known: {sorted(fields)}")
        fixed_scene(landscape.random_scene(np.random.default_rng(0)), self.scene)  # bad values fail here


# ----------------------------------------------------------------------------------------- videos

@dataclass(frozen=True)
class ObjectTrack:
    """A bright object crossing the frame (frame coordinates: fractions of the frame size)."""

    kind: ObjectKind
    color: tuple[float, float, float]  # RGB in [0, 1]
    x0: float  # centre at t = 0, fraction of the frame width
    speed: float  # frame widths per second (signed)
    base: float  # where it stands, fraction of the frame height
    size: float  # characteristic size, fraction of the frame height

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def random_object(rng: np.random.Generator, scene: landscape.Scene) -> ObjectTrack:
    """An object that fits the ground: boats on water, cars and people on land."""
    on_water = scene.ground == "sea" or (scene.ground == "lake" and rng.random() < 0.5)
    if on_water:  # the lake's shore is never nearer than 0.45 of the way from horizon to bottom
        kind, base = "boat", float(scene.horizon + (1 - scene.horizon) * rng.uniform(0.2, 0.35))
    else:  # the lake's shore is at most 3/4 of the way down (< 0.95): below 0.95 is always land
        kind = "car" if rng.random() < 0.5 else "person"
        base = float(rng.uniform(0.95, 0.98) if scene.ground == "lake" else rng.uniform(0.82, 0.95))
    direction = float(rng.choice([-1.0, 1.0]))
    x0 = float(rng.uniform(0.15, 0.4)) if direction > 0 else float(rng.uniform(0.6, 0.85))
    palette = [(0.95, 0.1, 0.1), (1.0, 0.85, 0.05), (0.1, 0.45, 1.0), (1.0, 1.0, 1.0), (1.0, 0.4, 0.0)]
    color = palette[int(rng.integers(len(palette)))]
    size = float(rng.uniform(0.09, 0.13)) if kind != "person" else float(rng.uniform(0.14, 0.2))
    return ObjectTrack(kind=kind, color=color, x0=x0, speed=direction * float(rng.uniform(0.12, 0.25)),
                       base=base, size=size)


def _box(px_: np.ndarray, py: np.ndarray, cx: float, cy: float, hx: float, hy: float) -> np.ndarray:
    return np.maximum(np.abs(px_ - cx) - hx, np.abs(py - cy) - hy)  # signed distance (approximate)


def paste_object(frame: np.ndarray, obj: ObjectTrack, t: float) -> np.ndarray:
    """The frame with the object drawn at its position at time t (anti-aliased, a new array)."""
    hgt, wid = frame.shape[:2]
    yy, xx = np.mgrid[0:hgt, 0:wid].astype(np.float64) + 0.5
    s = obj.size * hgt
    cx, by = (obj.x0 + obj.speed * t) * wid, obj.base * hgt
    dark = np.array([0.08, 0.08, 0.1])
    body = np.array(obj.color)
    parts: list[tuple[np.ndarray, np.ndarray]] = []  # (signed distance, colour), drawn in order
    if obj.kind == "car":
        parts.append((_box(xx, yy, cx, by - 0.45 * s, 1.0 * s, 0.22 * s) - 0.05 * s, body))
        parts.append((_box(xx, yy, cx - 0.1 * s, by - 0.82 * s, 0.5 * s, 0.18 * s), body))
        parts.append((_box(xx, yy, cx - 0.1 * s, by - 0.82 * s, 0.4 * s, 0.11 * s), np.array([0.6, 0.8, 0.95])))
        for wx in (-0.6, 0.6):
            parts.append((np.hypot(xx - cx - wx * s, yy - by + 0.2 * s) - 0.2 * s, dark))
    elif obj.kind == "person":
        stride = 0.12 * s * np.sin(t * 9.0)
        parts.append((_box(xx, yy, cx - stride, by - 0.22 * s, 0.06 * s, 0.22 * s), dark))
        parts.append((_box(xx, yy, cx + stride, by - 0.22 * s, 0.06 * s, 0.22 * s), dark))
        parts.append((_box(xx, yy, cx, by - 0.66 * s, 0.14 * s, 0.24 * s) - 0.03 * s, body))
        parts.append((np.hypot(xx - cx, yy - by + 1.02 * s) - 0.12 * s, np.array([0.95, 0.8, 0.65])))
    else:  # boat: hull and a sail
        hull = np.maximum(_box(xx, yy, cx, by - 0.15 * s, 1.0 * s, 0.15 * s),
                          np.abs(xx - cx) - (1.0 * s - (by - yy) * 0.8))
        parts.append((hull, body))
        sail = np.maximum(np.maximum(cx - xx, yy - (by - 0.3 * s)),
                          (xx - cx) - (yy - (by - 1.4 * s)) * 0.6)
        parts.append((np.maximum(sail, by - 1.4 * s - yy), np.array([0.97, 0.97, 0.95])))
    out = frame.astype(np.float64) / 255.0
    for dist, colour in parts:
        out = out + (colour - out) * np.clip(0.5 - dist, 0.0, 1.0)[..., None]
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Motion:
    """How a video moves: camera pan, start position, and an optional object."""

    x_start: float  # x_offset of the first frame, in pixels at the rendered height
    pan: float  # camera pan in image heights per second (0 = still camera; clouds still drift)
    obj: ObjectTrack | None = None

    def to_dict(self) -> dict:
        return {"x_start": self.x_start, "pan": self.pan, "obj": self.obj.to_dict() if self.obj else None}

    @classmethod
    def from_dict(cls, d: dict) -> Motion:
        obj = d.get("obj")
        if obj is not None:
            obj = ObjectTrack(**{**obj, "color": tuple(obj["color"])})
        return cls(x_start=float(d["x_start"]), pan=float(d["pan"]), obj=obj)


def render_video(scene: landscape.Scene, motion: Motion, size: int, frames: int, fps: float,
                 with_object: bool = True) -> np.ndarray:
    """uint8 frames [frames, size, size, 3]; `with_object=False` leaves the object out (ground truth)."""
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for i in range(frames):
        t = i / fps
        frame = landscape.render(scene, size, size, x_offset=motion.x_start + motion.pan * size * t, t=t)
        if with_object and motion.obj is not None:
            frame = paste_object(frame, motion.obj, t)
        out[i] = frame
    return out


# ----------------------------------------------------------------------------------------- items

@dataclass(frozen=True)
class ImageItem:
    file_name: str
    scene: landscape.Scene
    x_offset: int  # pixels at the image's height
    height: int
    width: int

    def render(self) -> np.ndarray:
        return landscape.render(self.scene, self.height, self.width, x_offset=self.x_offset)


@dataclass(frozen=True)
class VideoItem:
    file_name: str
    scene: landscape.Scene
    motion: Motion
    size: int
    frames: int
    fps: float

    @property
    def has_object(self) -> bool:
        return self.motion.obj is not None

    def render(self, with_object: bool = True) -> np.ndarray:
        return render_video(self.scene, self.motion, self.size, self.frames, self.fps, with_object)


def _framing(rng: np.random.Generator, scene: landscape.Scene, height: int, width: int) -> int:
    """A horizontal offset in pixels: mostly with the sun/moon in view, sometimes anywhere."""
    if rng.random() < 0.8:
        return int(round((scene.sun_u - rng.uniform(0.1, 0.9) * width / height) * height))
    return int(rng.integers(-4 * height, 4 * height))


def fixed_scene(scene: landscape.Scene, fields: dict) -> landscape.Scene:
    """`scene` with `fields` replaced (Scene's own checks reject bad values with a ValueError)."""
    if not fields:
        return scene
    return dataclasses.replace(scene, **{k: tuple(v) if k == "tint" else v for k, v in fields.items()})


def image_items(cfg: DemoDataConfig, seed: int) -> list[ImageItem]:
    height, width = cfg.image_size, cfg.image_width or cfg.image_size
    items = []
    for i in range(cfg.images):
        rng = np.random.default_rng([seed, _IMAGE, i])
        scene = landscape.random_scene(rng)
        scene = fixed_scene(scene, cfg.scene)
        items.append(ImageItem(f"img_{i:05d}.png", scene, _framing(rng, scene, height, width), height, width))
    return items


def video_items(cfg: DemoDataConfig, seed: int) -> list[VideoItem]:
    n_obj = int(round(cfg.object_fraction * cfg.videos))
    with_object = set(np.random.default_rng([seed, _OBJECTS]).permutation(cfg.videos)[:n_obj].tolist())
    items = []
    for i in range(cfg.videos):
        rng = np.random.default_rng([seed, _VIDEO, i])
        scene = landscape.random_scene(rng)
        x_start = _framing(rng, scene, cfg.video_size, cfg.video_size)
        pan = float(rng.uniform(0.04, 0.1) * rng.choice([-1.0, 1.0])) if rng.random() < cfg.pan_fraction else 0.0
        obj = random_object(rng, scene) if i in with_object else None
        motion = Motion(x_start=float(x_start), pan=pan, obj=obj)
        items.append(VideoItem(f"vid_{i:04d}.mp4", scene, motion, cfg.video_size, cfg.video_frames, cfg.video_fps))
    return items


# ----------------------------------------------------------------------------------------- writing

def write_png(path: Path, pixels: np.ndarray) -> None:
    with atomic.atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def _settings(cfg: DemoDataConfig, seed: int) -> dict:
    d = to_dict(cfg)
    d.pop("out_dir")
    d["seed"] = seed
    d["generator_version"] = GENERATOR_VERSION
    return d


def _clear_old(out: Path) -> int:
    """Remove the files of an earlier run with other settings (only names this stage makes)."""
    n = 0
    for pattern in ("images/img_*.png", "videos/vid_*.mp4", "images/metadata.jsonl",
                    "videos/metadata.jsonl", "scenes.jsonl", ".done"):
        for p in out.glob(pattern):
            p.unlink()
            n += 1
    return n


def make_demo_data(cfg: DemoDataConfig, seed: int, out: Path, progress: bool = True) -> dict:
    """Make (or finish) the data set in `out`; returns the summary statistics."""
    t0 = time.time()
    marker, settings_file = out / ".done", out / "settings.json"
    settings = _settings(cfg, seed)
    if settings_file.is_file():
        old = atomic.read_json(settings_file)
        if old != settings:
            log.warning("%s holds data made with other settings (%s); making it again",
                        out, {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v})
            _clear_old(out)
    if atomic.is_done(marker) and settings_file.is_file():
        stats = atomic.read_json(marker)
        log.info("%s is complete already (%d images, %d videos); nothing to do",
                 out, stats.get("images", 0), stats.get("videos", 0))
        return {**stats, "made_images": 0, "made_videos": 0, "seconds": round(time.time() - t0, 2)}
    for sub in ("images", "videos"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temporaries(out / sub)
    atomic.write_json(settings_file, settings)

    images, videos = image_items(cfg, seed), video_items(cfg, seed)
    made = {"images": 0, "videos": 0}
    total = len(images) + len(videos)
    with tqdm(total=total, desc="demo data", unit="item", disable=not progress) as bar:
        for item in images:
            path = out / "images" / item.file_name
            if not path.is_file():
                write_png(path, item.render())
                made["images"] += 1
            bar.update(1)
        for item in videos:
            path = out / "videos" / item.file_name
            if not path.is_file():
                write_mp4(path, item.render(), item.fps)
                made["videos"] += 1
            bar.update(1)

    atomic.write_text(out / "images" / "metadata.jsonl", _jsonl(
        [{"file_name": it.file_name, "caption": landscape.caption(it.scene)} for it in images]))
    atomic.write_text(out / "videos" / "metadata.jsonl", _jsonl(
        [{"file_name": it.file_name, "caption": landscape.caption(it.scene), "has_object": it.has_object}
         for it in videos]))
    truth = [{"file_name": f"images/{it.file_name}", "kind": "image", "scene": it.scene.to_dict(),
              "x_offset": it.x_offset, "height": it.height, "width": it.width} for it in images]
    truth += [{"file_name": f"videos/{it.file_name}", "kind": "video", "scene": it.scene.to_dict(),
               "motion": it.motion.to_dict(), "size": it.size, "frames": it.frames, "fps": it.fps,
               "has_object": it.has_object} for it in videos]
    atomic.write_text(out / "scenes.jsonl", _jsonl(truth))
    stats = {"images": len(images), "videos": len(videos), "videos_with_object": sum(v.has_object for v in videos),
             "made_images": made["images"], "made_videos": made["videos"], "seconds": round(time.time() - t0, 2)}
    atomic.mark_done(marker, stats)
    return stats


# ----------------------------------------------------------------------------------------- preview

def contact_sheet(cfg: DemoDataConfig, seed: int, count: int = 16, panoramas: int = 3) -> np.ndarray:
    """The first `count` images of the data set, 4 per row; then `panoramas` of its scenes 4x
    wider (different times of day where it can); then one video's frames (one with an object)."""
    size = cfg.image_size
    items = image_items(dataclasses.replace(cfg, images=max(count, 8 * panoramas), image_width=None), seed)
    tiles = [it.render() for it in items[:count]]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 4)
    rows = [np.concatenate(tiles[r:r + 4], axis=1) for r in range(0, len(tiles), 4)]
    wide: list[ImageItem] = []
    for it in items:  # first one scene per time of day, then any
        if len(wide) < panoramas and it.scene.time_of_day not in {w.scene.time_of_day for w in wide}:
            wide.append(it)
    wide += [it for it in items if it not in wide][:panoramas - len(wide)]
    for it in wide:
        rows.append(landscape.render(it.scene, size, 4 * size, x_offset=it.x_offset))
    vids = video_items(dataclasses.replace(cfg, videos=max(cfg.videos, 1), video_size=size), seed)
    vid = next((v for v in vids if v.has_object), vids[0])
    frames = vid.render()
    picks = np.linspace(0, len(frames) - 1, 4).round().astype(int)
    rows.append(np.concatenate([frames[k] for k in picks], axis=1))
    gap = np.full((2, 4 * size, 3), 255, dtype=np.uint8)
    return np.concatenate([x for r in rows for x in (r, gap)][:-1], axis=0)


# ----------------------------------------------------------------------------------------- entry

def _section(run: RunConfig) -> DemoDataConfig:
    return run.section(SECTION, DemoDataConfig)


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="run config (YAML); its `demo_data` section drives the stage")
    ap.add_argument("--preview", metavar="OUT.png", help="write a contact sheet of generated images and exit")
    ap.add_argument("--count", type=int, default=16, help="images on the contact sheet")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run = load_config(args.config) if args.config else None
    cfg = _section(run) if run is not None else DemoDataConfig()
    seed = cfg.seed if cfg.seed is not None else (run.seed if run is not None else 0)
    if seed < 0:
        raise ConfigError(f"{run.path if run else '--preview'}: demo_data needs a seed >= 0, got {seed}")

    if args.preview:
        sheet = contact_sheet(cfg, seed, count=max(1, args.count))
        write_png(Path(args.preview), sheet)
        print(f"make_demo_data: contact sheet {sheet.shape[1]}x{sheet.shape[0]} -> {args.preview}")
        return 0
    if run is None:
        ap.error("--config is required (or --preview OUT.png)")
    if not run.has(SECTION):
        print(f"make_demo_data: {run.path} has no '{SECTION}' section; nothing to do")
        return 0
    ranks = rank_info()
    if not ranks.is_main:
        log.info("rank %d: the demo data is made by rank 0 alone", ranks.rank)
        return 0
    out = run.resolve(cfg.out_dir) if cfg.out_dir else run.run_dir / "demo_data"
    stats = make_demo_data(cfg, seed, out, progress=not args.no_progress)
    print(f"make_demo_data: {stats['images']} images ({stats['made_images']} made now), "
          f"{stats['videos']} videos ({stats['made_videos']} made now, {stats['videos_with_object']} with an object) "
          f"in {out} [{stats['seconds']} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
