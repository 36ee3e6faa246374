"""Finding and reading the images, videos and prompts that the metrics consume.

Generated samples are a folder of PNG images and/or MP4 videos (searched recursively, sorted by
relative path so every run sees the same order); the sampler writes a JSON sidecar
`<name>.json` with a "prompt" key beside each image. A real reference set is a folder of
images/videos or a Parquet manifest (pipeline/formats/manifest.py): image rows are read with
`load_image_crop` (the same crop the tokenizer saw), clip rows by their MP4 path.

An image item may carry a `region` [x0, y0, x1, y1] in the pixels of the image as read: only that
box is returned (the extended half of an extension, or the inner part of an image made one block
larger for Block-FID's shifted reading). A region outside the image is a MediaError.

Every reader raises MediaError naming the file; callers record such items and go on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


class MediaError(PipelineError, RuntimeError):
    """An input that cannot be read; the message names the file."""


@dataclass(frozen=True)
class ImageItem:
    """One image to read: a whole file, or a manifest crop resized to `size`; then its `region`."""

    path: Path
    crop: tuple[int, int, int, int] | None = None
    size: int | None = None
    region: tuple[int, int, int, int] | None = None

    def key(self) -> list:
        """What identifies this input in a cache key (file, size, mtime, the crop and the region)."""
        key = [*_file_key(self.path), list(self.crop) if self.crop else None, self.size]
        return key + [list(self.region)] if self.region else key  # keys of region-free items unchanged

    def read(self) -> np.ndarray:
        if self.crop is not None:
            from pipeline.formats.manifest import ManifestError, load_image_crop

            try:
                image = load_image_crop(self.path, self.crop, int(self.size))
            except ManifestError as e:
                raise MediaError(str(e)) from e
        else:
            image = read_image(self.path)
        return image if self.region is None else cut_region(image, self.region, self.path)


def cut_region(image: np.ndarray, region, where: Path) -> np.ndarray:
    """The box [x0, y0, x1, y1] of an image [H, W, C] (a view); outside the image is a MediaError."""
    x0, y0, x1, y1 = (int(v) for v in region)
    h, w = image.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise MediaError(f"{where}: region {[x0, y0, x1, y1]} is outside the {w}x{h} image")
    return image[y0:y1, x0:x1]


def with_region(items: list[ImageItem], region) -> list[ImageItem]:
    """The same items, each restricted to `region` (None: unchanged)."""
    if region is None:
        return items
    return [dataclasses.replace(it, region=tuple(int(v) for v in region)) for it in items]


@dataclass(frozen=True)
class VideoItem:
    path: Path

    def key(self) -> list:
        return _file_key(self.path)


def _file_key(path: Path) -> list:
    """[path, size, mtime_ns]; a missing file still has a key (reading it reports the problem)."""
    try:
        st = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path), st.st_size, st.st_mtime_ns]


def _visible_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under `folder` with one of `suffixes`, skipping hidden names (temporaries)."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in suffixes:
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def folder_images(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[ImageItem]:
    return [ImageItem(p) for p in _visible_files(folder, suffixes)]


def folder_videos(folder: Path) -> list[VideoItem]:
    return [VideoItem(p) for p in _visible_files(folder, VIDEO_SUFFIXES)]


def manifest_items(path: Path, split: str) -> tuple[list[ImageItem], list[VideoItem]]:
    """Image and clip items of a manifest, keeping rows whose split is `split` ("" keeps all)."""
    from pipeline.formats.manifest import read_rows

    rows = read_rows(path)
    if split:
        rows = [r for r in rows if r.get("split") == split]
    images, videos = [], []
    for r in rows:
        if r.get("crop") is not None and r.get("size") is not None:
            images.append(ImageItem(Path(r["path"]), crop=tuple(int(v) for v in r["crop"]), size=int(r["size"])))
        elif r.get("frames") is not None:
            videos.append(VideoItem(Path(r["path"])))
        else:
            raise MediaError(f"{path}: row {r.get('id')!r} is neither an image row (crop, size) nor a clip row")
    return images, videos


def read_image(path: Path) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image file (EXIF orientation applied, any mode converted)."""
    from PIL import Image, ImageOps

    from pipeline.formats.manifest import to_rgb

    try:
        with Image.open(path) as im:
            im = to_rgb(ImageOps.exif_transpose(im))
            return np.asarray(im, dtype=np.uint8).copy()
    except Exception as e:
        raise MediaError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def read_video(path: Path, max_frames: int | None = None) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3] of a video (the first `max_frames` when given), via PyAV."""
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except MediaError:
        raise
    except Exception as e:
        raise MediaError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    if not frames:
        raise MediaError(f"{path}: no frames decoded")
    return np.stack(frames)


def read_prompt(image_path: Path) -> str | None:
    """The "prompt" of the sampler's JSON sidecar `<name>.json`, or None if there is none."""
    sidecar = image_path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MediaError(f"{sidecar}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise MediaError(f"{sidecar}: expected a JSON object with a 'prompt' key")
    prompt = data.get("prompt")
    if prompt is None:
        return None
    if not isinstance(prompt, str):
        raise MediaError(f"{sidecar}: 'prompt' must be a string, got {type(prompt).__name__}")
    return prompt


def read_all(items, bad: list[dict], max_frames: int | None = None) -> Iterator[tuple[object, np.ndarray]]:
    """(item, pixels) for every readable item; an unreadable one goes to `bad` with the reason.

    One broken sample must not kill an evaluation, but it must not vanish silently either: the
    stage reports `bad` in its JSON and log.
    """
    for item in items:
        try:
            if isinstance(item, ImageItem):
                pixels = item.read()
            else:
                pixels = read_video(item.path, max_frames)
        except MediaError as e:
            log.warning("skipping unreadable input: %s", e)
            bad.append({"path": str(item.path), "reason": str(e)})
            continue
        yield item, pixels
