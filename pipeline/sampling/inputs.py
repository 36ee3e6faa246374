"""What sampling jobs start from: input pictures, prompt files, and sets of manifest rows.

`load_input` reads one picture (an image file, a video's first frame, or one manifest row with its
recorded crop); `read_prompts` a prompt file (plain lines or JSONL); `manifest_set` the rows of one
split of a Parquet manifest, in manifest order, for the jobs that run over a whole test set (the
paper's protocol: every test caption, every test image's half, every test clip's first frame).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError

log = logging.getLogger("sample")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def load_input(path: Path, index: int = 0, crop=None, where: str = "input") -> np.ndarray:
    """A picture as uint8 RGB [H, W, 3]: image file, video's first frame, or manifest row `index`;
    then the crop [x0, y0, x1, y1] when given. Problems are ConfigErrors naming `where`."""
    from PIL import Image

    if not path.is_file():
        raise ConfigError(f"{where}: file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            from pipeline.formats.manifest import read_rows

            rows = read_rows(path)
            if not 0 <= index < len(rows):
                raise ValueError(f"input_index {index} outside the manifest's {len(rows)} rows")
            rgb = row_picture(path, rows[index])
        elif suffix in IMAGE_SUFFIXES:
            from pipeline.formats.manifest import to_rgb

            with Image.open(path) as im:
                rgb = np.asarray(to_rgb(im), dtype=np.uint8)
        else:
            from pipeline.formats.video_io import read_frames_at

            rgb = read_frames_at(path, [0.0])[0]
    except (OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{path}: cannot read the {where} ({e})") from e
    if crop is not None:
        x0, y0, x1, y1 = crop
        if not (0 <= x0 < x1 <= rgb.shape[1] and 0 <= y0 < y1 <= rgb.shape[0]):
            raise ConfigError(f"{where}: input_crop {list(crop)} is outside the {rgb.shape[1]} x {rgb.shape[0]} "
                              f"input {path}")
        rgb = rgb[y0:y1, x0:x1]
    return np.ascontiguousarray(rgb)


def row_picture(manifest: Path, row: dict) -> np.ndarray:
    """The picture of one manifest row: an image row's recorded crop, a clip row's first frame."""
    from pipeline.formats.manifest import load_image_crop
    from pipeline.formats.video_io import read_frames_at

    media = Path(row["path"])
    if not media.is_absolute():
        media = manifest.parent / media
    if media.suffix.lower() in IMAGE_SUFFIXES:
        return load_image_crop(media, row["crop"], int(row["size"]))
    return read_frames_at(media, [0.0])[0]  # a clip row: the clip file is already cut and sized


def manifest_set(path: Path, split: str, limit: int | None, where: str) -> list[tuple[int, dict]]:
    """(row index, row) of every row of `split` ("" = every row) in manifest order, the first `limit`."""
    from pipeline.formats.manifest import ManifestError, read_rows

    try:
        rows = read_rows(path)
    except ManifestError as e:
        raise ConfigError(f"{where}: {e}") from e
    chosen = [(i, r) for i, r in enumerate(rows) if not split or r.get("split") == split]
    if not chosen:
        raise ConfigError(f"{where}: {path} has no row with split {split!r}")
    for _, r in chosen:
        name = str(r.get("id") or "")
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"{where}: {path}: row id {name!r} cannot name an output file")
    return chosen[:limit] if limit is not None else chosen


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
