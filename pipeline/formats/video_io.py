"""Video files through PyAV (FFmpeg inside the wheel; torchvision 0.29 has no video reader).

`write_mp4` is the one writer the project uses (demo data, cut clips, sampled videos).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.errors import PipelineError


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Write uint8 RGB frames [T, H, W, 3] as H.264 MP4 (yuv420p), atomically.

    H and W must be even (yuv420p); `crf` 18 is visually lossless for our purposes. The same frames
    must always give the same bytes (stages that cut clips are checked byte for byte after a kill
    and a re-run), hence two settings:
    - one encoder thread; stages get their parallelism from processes;
    - no macroblock-tree rate control (`mbtree=0`). With it, x264 gave different bytes for the same
      frames once the process had decoded other videos, as a curation worker does: 1 to 17 encodes
      in 150 varied at 32, 48, 80, 112 and 160 pixels square (none at 64, 96, 128, 256 in 120 each),
      pixels off by up to 20 levels, as if it read memory left over from earlier work. Without it,
      300 encodes of 32x32 and 200 of 48x48 agreed (tests/test_video_io.py repeats the check). The
      cost, measured on 12 demo videos (128x128, 20 frames, crf 18): files 35% larger.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t == 0 or h % 2 or w % 2:
        raise ValueError(f"{path}: need >= 1 frame and even height/width, got {frames.shape}")
    with atomic.atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}
            stream.codec_context.thread_count = 1
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


# --- reading: probe, timestamp-based frame selection (videos helper) ---------------------------
#
# Choices the paper leaves open, recorded here:
# - Time zero is the video stream's first frame; all timestamps below are seconds from it.
# - Resampling to a target fps (the paper: 5) picks, for each target time t = k / fps, the frame
#   on screen at t (the last frame with pts <= t: sample-and-hold by timestamp). This is exact for
#   constant and variable frame rates alike, never blends frames, and decodes sequentially (no
#   per-frame seeks, which are slow and inexact on long-GOP files).
# - Rotation: the display matrix (MP4 `tkhd` matrix / the old `rotate` tag, exported by FFmpeg as
#   frame side data) is applied as `ffmpeg -autorotate` would, for multiples of 90 degrees.
#   Other angles and mirrored matrices are reported by `probe` so the caller can reject them.
# - Non-square pixels (sample aspect ratio != 1) are not stretched: stock footage is square-pixel.


class VideoError(PipelineError, RuntimeError):
    """A video that cannot be used; `kind` is a short reason code, the message names the file."""

    def __init__(self, path: str | Path, kind: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = str(path)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a file. Sizes are as displayed (rotation applied)."""

    path: str
    has_video: bool
    has_audio: bool
    duration_s: float = 0.0  # first frame's start to the last frame's end
    fps: float = 0.0  # average: frames / duration
    variable_fps: bool = False  # frame intervals differ by more than timestamp rounding
    frame_count: int = 0  # video packets found by demuxing the whole file
    width: int = 0
    height: int = 0
    coded_width: int = 0
    coded_height: int = 0
    rotation: int = 0  # degrees counter-clockwise applied for display (FFmpeg's convention)
    mirrored: bool = False  # the display matrix flips the picture
    truncated: bool = False  # fewer packets in the file than its index announces
    codec: str = ""

    @property
    def rotation_supported(self) -> bool:
        return self.rotation % 90 == 0 and not self.mirrored


# Magic numbers of the containers video files come in; used only to word the error for a file
# FFmpeg cannot open (a damaged video versus something that is not a video at all).
_CONTAINER_MAGIC = (
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"),  # ISO BMFF / QuickTime
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"\x00\x00\x01\xba"), (0, b"\x47"),  # MPEG-PS, MPEG-TS
    (0, b"FLV"), (0, b"OggS"),
)


def _looks_like_container(head: bytes) -> bool:
    return any(head[off:off + len(magic)] == magic for off, magic in _CONTAINER_MAGIC)


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoError(path, "missing", "file not found")
    size = path.stat().st_size
    if size == 0:
        raise VideoError(path, "empty_file", "empty file (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        with open(path, "rb") as f:
            head = f.read(16)
        if _looks_like_container(head):
            raise VideoError(path, "corrupt", f"damaged or truncated video container ({e})") from e
        raise VideoError(path, "not_a_video", f"not a video file FFmpeg can open ({e})") from e


def _display_matrix(frame) -> np.ndarray | None:
    """The 3x3 display matrix (16.16 / 2.30 fixed point) of a decoded frame, if it has one."""
    for sd in frame.side_data:
        if sd.type.name == "DISPLAYMATRIX":
            raw = memoryview(sd).tobytes()
            if len(raw) >= 36:
                return np.frombuffer(raw[:36], dtype="=i4").astype(np.int64).reshape(3, 3)
    return None


def probe(path: str | Path) -> VideoInfo:
    """Duration, fps (average; variable or not), size, rotation and stream kinds of a video file.

    Demuxes every video packet (no decoding, cheap next to decoding) for exact counts and
    timestamps, and decodes the first frame, which proves the stream decodes and carries the
    display matrix. Raises VideoError (kind: missing, empty_file, not_a_video, corrupt,
    no_frames) when the file cannot be read; a file without a video stream is not an error (has_video=False).
    """
    import av

    path = Path(path)
    with _open(path) as container:  # first pass: the first frame (no seeking: some inputs cannot)
        has_audio = bool(container.streams.audio)
        if not container.streams.video:
            return VideoInfo(path=str(path), has_video=False, has_audio=has_audio)
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as e:
            raise VideoError(path, "corrupt", f"the first frame does not decode ({e})") from e
        if first is None:
            raise VideoError(path, "no_frames", "the video stream holds no frame that decodes")
        codec = stream.codec_context.name
    with _open(path) as container:  # second pass: every packet's timestamp
        stream = container.streams.video[0]
        announced = int(stream.frames or 0)
        tb = stream.time_base
        average_rate = stream.average_rate
        pts, durations = [], []
        try:
            for packet in container.demux(stream):
                if packet.pts is not None and packet.size:
                    pts.append(int(packet.pts))
                    durations.append(int(packet.duration or 0))
        except av.FFmpegError as e:
            raise VideoError(path, "corrupt", f"cannot demux the video stream ({e})") from e
    if not pts:
        raise VideoError(path, "no_frames", "the video stream holds no timestamped frames")
    order = np.argsort(np.asarray(pts), kind="stable")
    pts_sorted = np.asarray(pts, dtype=np.int64)[order]
    deltas = np.diff(pts_sorted)
    median = float(np.median(deltas)) if len(deltas) else 0.0
    last_duration = durations[int(order[-1])] or median or (1.0 / float(average_rate or 25) / tb)
    duration_s = float((pts_sorted[-1] - pts_sorted[0] + last_duration) * tb)
    # Timestamps are rounded to the time base, so allow a couple of ticks of jitter.
    variable = bool(len(deltas) and (deltas.max() - deltas.min()) > max(2.0, 0.05 * median))
    matrix = _display_matrix(first)
    rotation = int(first.rotation) % 360 if matrix is not None else 0
    a, b, c, d = (int(v) for v in matrix[:2, :2].ravel()) if matrix is not None else (1, 0, 0, 1)
    mirrored = a * d - b * c < 0
    cw, ch = first.width, first.height
    w, h = (ch, cw) if rotation in (90, 270) else (cw, ch)
    return VideoInfo(
        path=str(path), has_video=True, has_audio=has_audio, duration_s=duration_s,
        fps=len(pts) / duration_s if duration_s > 0 else 0.0, variable_fps=variable,
        frame_count=len(pts), width=w, height=h, coded_width=cw, coded_height=ch, rotation=rotation,
        mirrored=mirrored, truncated=bool(announced and len(pts) < announced), codec=codec,
    )


def rotate_for_display(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a counter-clockwise display rotation (a multiple of 90 degrees) to [H, W, 3] pixels."""
    k = (rotation // 90) % 4
    if rotation % 90:
        raise ValueError(f"rotation {rotation} is not a multiple of 90 degrees")
    return np.ascontiguousarray(np.rot90(rgb, k=k)) if k else rgb


TIME_EPS_S = 1e-6  # a wanted time this close to a frame's start counts as that frame's (float rounding)


def iter_frames_at(path: str | Path, times: Iterable[float], *, rotation: int | None = None,
                   size: tuple[int, int] | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """For each requested time (seconds from the first frame, ascending), the frame on screen then.

    Yields (time, uint8 RGB [H, W, 3] as displayed). Times before the first frame get the first
    frame; times after the last frame's end are not yielded (the caller sees fewer frames).
    `rotation` defaults to the file's display matrix; `size` (coded width, height) pins the
    decoded size for streams that change resolution midway. Errors name the file.
    """
    import av

    path = Path(path)
    it = iter(times)
    target = next(it, None)
    if target is None:
        return
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(path, "no_video_stream", "no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # parallelism comes from the stage's worker processes
        # (Clip bytes that varied between identical runs were first blamed on frame-threaded
        # decoding here; the cause found later was x264's mbtree, see `write_mp4`.)
        tb = stream.time_base
        start = stream.start_time
        avg = float(stream.average_rate or 25)
        if target > 2.0 and start is not None:  # jump near the first wanted time (lands on a keyframe)
            container.seek(int(start + (target - 1.0) / tb), stream=stream, backward=True)
        prev = prev_t = None
        prev_rgb = None
        origin = start  # pts of time zero (the first frame's when the stream gives no start time)
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    t = (prev_t + 1.0 / avg) if prev_t is not None else 0.0
                else:
                    if origin is None:
                        origin = frame.pts
                    t = float((frame.pts - origin) * tb)  # exact rational, rounded once
                if prev is not None and prev_t is not None and t <= prev_t:
                    continue  # a repeated or out-of-order timestamp: keep the earlier frame
                while prev is not None and target is not None and target < t - TIME_EPS_S:
                    if prev_rgb is None:
                        prev_rgb = _to_rgb(prev, rotation, size)
                    yield target, prev_rgb
                    target = next(it, None)
                if target is None:
                    return
                prev, prev_t, prev_rgb = frame, t, None
        except av.FFmpegError as e:
            raise VideoError(path, "decode_error", f"decoding failed near {prev_t or 0.0:.2f} s ({e})") from e
        if prev is None:
            return
        last_duration = float(prev.duration * tb) if prev.duration else 1.0 / avg
        while target is not None and target < prev_t + last_duration - TIME_EPS_S:
            if prev_rgb is None:
                prev_rgb = _to_rgb(prev, rotation, size)
            yield target, prev_rgb
            target = next(it, None)


def iter_resampled(path: str | Path, fps: float, *, rotation: int | None = None,
                   size: tuple[int, int] | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """The video resampled to `fps` (frame k is the one on screen at k / fps), to the end."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return iter_frames_at(path, (k / fps for k in itertools.count()), rotation=rotation, size=size)


def read_frames_at(path: str | Path, times: Sequence[float], **kwargs) -> np.ndarray:
    """`iter_frames_at` collected into [len(times), H, W, 3]; raises VideoError if the video is shorter."""
    frames = [rgb for _, rgb in iter_frames_at(path, times, **kwargs)]
    if len(frames) != len(times):
        raise VideoError(path, "too_short", f"{len(times)} frames wanted up to {max(times):.3f} s, "
                                            f"the video gives {len(frames)}")
    return np.stack(frames)


def _to_rgb(frame, rotation: int | None, size: tuple[int, int] | None) -> np.ndarray:
    if rotation is None:
        matrix = _display_matrix(frame)
        rotation = int(frame.rotation) % 360 if matrix is not None else 0
    w, h = size if size is not None else (frame.width, frame.height)
    rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
    return rotate_for_display(rgb, rotation)


# --- cutting into clips ------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path
    index: int  # k: the clip holds resampled frames k*frames .. (k+1)*frames - 1
    start: float  # seconds from the first frame
    crop: tuple[int, int, int, int]  # x0, y0, x1, y1 in displayed source pixels


def crop_box(width: int, height: int, mode: str, seed: int, key: str) -> tuple[int, int, int, int]:
    """The largest square of a width x height frame: centred, or at a position seeded by (seed, key)."""
    side = min(width, height)
    if mode == "center":
        x0, y0 = (width - side) // 2, (height - side) // 2
    elif mode == "random":
        rng = np.random.default_rng([seed, int(hashlib.sha1(key.encode()).hexdigest()[:15], 16)])
        x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    else:
        raise ValueError(f"crop mode must be 'center' or 'random', got {mode!r}")
    return x0, y0, x0 + side, y0 + side


def cut_clips(path: str | Path, info: VideoInfo, *, fps: float, frames: int, size: int, crop: str, seed: int,
              clip_id: Callable[[int], str], clip_dir: Path, crf: int = 18, max_clips: int = 0,
              deadline: float | None = None) -> list[Clip]:
    """Resample to `fps`, cut consecutive clips of `frames` frames from 0 s, write them as MP4.

    Every clip is the crop square (`crop_box`, chosen per clip id) resized to size x size with
    bicubic filtering (PIL's, which low-passes when shrinking), written with `write_mp4` to
    clip_dir/<id>.mp4. A tail shorter than `frames` is dropped. Raises VideoError (decode_error,
    or timeout once `deadline`, a time.monotonic() value, has passed).
    """
    from PIL import Image

    path = Path(path)
    clips: list[Clip] = []
    group: list[np.ndarray] = []
    box = None
    for _t, rgb in iter_resampled(path, fps, rotation=info.rotation, size=(info.coded_width, info.coded_height)):
        if deadline is not None and time.monotonic() > deadline:
            raise VideoError(path, "timeout", f"not finished within the time limit ({len(clips)} clip(s) done)")
        k = len(clips)
        if box is None:
            box = crop_box(info.width, info.height, crop, seed, clip_id(k))
        im = Image.fromarray(rgb).crop(box)
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        group.append(np.asarray(im))
        if len(group) < frames:
            continue
        out = clip_dir / f"{clip_id(k)}.mp4"
        write_mp4(out, np.stack(group), fps, crf=crf)
        clips.append(Clip(id=clip_id(k), path=out, index=k, start=k * frames / fps, crop=box))
        group, box = [], None
        if max_clips and len(clips) >= max_clips:
            break
    return clips
