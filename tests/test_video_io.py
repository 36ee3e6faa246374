"""pipeline.formats.video_io reading: probe, timestamp resampling, rotation; plus the odd-video corpus builder
that the ingest and filter tests import."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.formats.video_io import VideoError, crop_box, iter_resampled, probe, read_frames_at, write_mp4

RED, BLUE = (230, 20, 20), (20, 20, 230)


def halves(h: int, w: int, left=RED, right=BLUE) -> np.ndarray:
    """A frame whose left half is `left` and right half `right` (shows any rotation or flip)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = left
    a[:, w // 2:] = right
    return a


def make_video(path: Path, frames: np.ndarray | list, *, fps: float = 10, codec: str = "libx264",
               fmt: str | None = None, pts_ms: list[int] | None = None, rotation: float | None = None,
               hflip: bool = False, faststart: bool = False, audio: bool = False) -> Path:
    """Write a test video with PyAV: any container/codec, explicit timestamps (VFR), display rotation."""
    import av

    frames = np.asarray(frames)
    t, h, w, _ = frames.shape
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=opts) as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "12"}
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None or hflip:
            s.set_display_rotation(rotation or 0, hflip=hflip)
        a = None
        if audio:
            a = c.add_stream("aac", rate=16000)
        for i, arr in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
            for pk in s.encode(f):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
        if a is not None:
            _encode_silence(a, c, seconds=t / fps)
    return path


def make_audio_only(path: Path, seconds: float = 1.0) -> Path:
    import av

    with av.open(str(path), "w", format="mp4") as c:
        _encode_silence(c.add_stream("aac", rate=16000), c, seconds)
    return path


def _encode_silence(stream, container, seconds: float) -> None:
    import av

    for i in range(max(1, int(seconds * 16000 / 1024))):
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        fr.sample_rate, fr.pts = 16000, i * 1024
        for pk in stream.encode(fr):
            container.mux(pk)
    for pk in stream.encode():
        container.mux(pk)


def gray_levels(n: int, h: int = 32, w: int = 32, step: int = 12) -> np.ndarray:
    """n flat frames with distinct gray levels (frame i has level 10 + step * i), easy to identify."""
    return np.stack([np.full((h, w, 3), 10 + step * i, np.uint8) for i in range(n)])


def level_index(frame: np.ndarray, step: int = 12) -> int:
    return int(round((float(frame.mean()) - 10) / step))


def moving_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Textured frames with motion (a smooth random background and a moving bright square)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    base = np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w]
    out = []
    for i in range(n):
        f = base.copy()
        x = (3 * i) % max(1, w - 8)
        f[4:12, x:x + 8] = 250
        out.append(f)
    return np.stack(out)


# ------------------------------------------------------------------------------------------ tests

def test_probe_constant_rate(tmp_path):
    p = make_video(tmp_path / "a.mp4", gray_levels(20, 32, 48), fps=10)
    info = probe(p)
    assert info.has_video and not info.has_audio
    assert (info.width, info.height, info.rotation, info.frame_count) == (48, 32, 0, 20)
    assert info.duration_s == pytest.approx(2.0, abs=1e-3) and info.fps == pytest.approx(10.0, rel=1e-3)
    assert not info.variable_fps and not info.truncated and info.codec == "h264"


@pytest.mark.parametrize("codec,fmt,name", [("mpeg4", "avi", "a.avi"), ("libvpx-vp9", "webm", "a.webm"),
                                            ("libx264", "matroska", "a.mkv")])
def test_probe_other_containers(tmp_path, codec, fmt, name):
    p = make_video(tmp_path / name, gray_levels(10, 32, 32), fps=5, codec=codec, fmt=fmt)
    info = probe(p)
    assert info.frame_count == 10 and info.duration_s == pytest.approx(2.0, abs=0.05)
    assert len(list(iter_resampled(p, 5))) == 10


def test_resample_picks_frame_on_screen(tmp_path):
    p = make_video(tmp_path / "a.mp4", gray_levels(12), fps=6)  # frame i shown during [i/6, (i+1)/6)
    got = [(round(t, 3), level_index(f)) for t, f in iter_resampled(p, 4)]
    assert got == [(k / 4, int(np.floor(k / 4 * 6 + 1e-9))) for k in range(8)]


def test_variable_frame_rate_detected_and_resampled_by_timestamp(tmp_path):
    pts = [0, 40, 300, 340, 900, 1000, 1500, 1990]  # ms; irregular gaps
    p = make_video(tmp_path / "vfr.mp4", gray_levels(8), fps=10, pts_ms=pts)
    info = probe(p)
    assert info.variable_fps and info.frame_count == 8
    times = [0.0, 0.2, 0.35, 0.95, 1.2, 1.6, 2.0]
    frames = read_frames_at(p, times)
    expected = [max(i for i, q in enumerate(pts) if q <= t * 1000 + 1e-6) for t in times]
    assert [level_index(f) for f in frames] == expected
    cfr = probe(make_video(tmp_path / "cfr.mp4", gray_levels(8), fps=10))
    assert not cfr.variable_fps


@pytest.mark.parametrize("rotation,shape,top,bottom", [
    (-90, (64, 32), RED, BLUE),    # phone portrait ("rotate=90"): turned clockwise, left half on top
    (90, (64, 32), BLUE, RED),     # counter-clockwise: the right half comes on top
    (180, (32, 64), None, None),   # upside down: left/right swap
])
def test_rotation_applied(tmp_path, rotation, shape, top, bottom):
    p = make_video(tmp_path / "r.mp4", np.stack([halves(32, 64)] * 5), fps=5, rotation=rotation)
    info = probe(p)
    assert info.rotation == rotation % 360 and (info.height, info.width) == shape
    assert (info.coded_width, info.coded_height) == (64, 32) and info.rotation_supported
    frame = read_frames_at(p, [0.0])[0].astype(int)
    assert frame.shape[:2] == shape
    if top is not None:
        assert np.abs(frame[:8].mean((0, 1)) - top).max() < 25
        assert np.abs(frame[-8:].mean((0, 1)) - bottom).max() < 25
    else:
        assert np.abs(frame[:, :8].mean((0, 1)) - BLUE).max() < 25
        assert np.abs(frame[:, -8:].mean((0, 1)) - RED).max() < 25


def test_mirrored_and_odd_angles_reported(tmp_path):
    m = probe(make_video(tmp_path / "m.mp4", gray_levels(3), fps=5, hflip=True))
    assert m.mirrored and not m.rotation_supported
    odd = probe(make_video(tmp_path / "o.mp4", gray_levels(3), fps=5, rotation=45))
    assert odd.rotation == 45 and not odd.rotation_supported


def test_bad_files_raise_with_kind_and_name(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 20)
    good = make_video(tmp_path / "good.mp4", moving_frames(30, 32, 32), fps=10).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 2])  # moov at the end: lost
    for name, kind in [("zero.mp4", "empty_file"), ("text.mp4", "not_a_video"), ("cut.mp4", "corrupt"),
                       ("absent.mp4", "missing")]:
        with pytest.raises(VideoError) as info:
            probe(tmp_path / name)
        assert info.value.kind == kind and name in str(info.value)
    fast = make_video(tmp_path / "fast.mp4", moving_frames(30, 32, 32), fps=10, faststart=True).read_bytes()
    (tmp_path / "fastcut.mp4").write_bytes(fast[: int(len(fast) * 0.6)])
    cut = probe(tmp_path / "fastcut.mp4")
    assert cut.truncated and cut.frame_count < 30
    audio = probe(make_audio_only(tmp_path / "audio.mp4"))
    assert not audio.has_video and audio.has_audio


def test_read_frames_at_too_far_raises(tmp_path):
    p = make_video(tmp_path / "a.mp4", gray_levels(5), fps=5)
    with pytest.raises(VideoError, match="a.mp4"):
        read_frames_at(p, [0.0, 0.5, 2.0])


def test_seek_for_late_timestamps(tmp_path):
    # 5 s long: the first wanted time is past the threshold above which reading starts with a seek
    p = make_video(tmp_path / "a.mp4", gray_levels(20, step=12), fps=4)
    frames = read_frames_at(p, [3.1, 4.9])
    assert [level_index(f) for f in frames] == [12, 19]


def test_crop_box_center_and_seeded_random():
    assert crop_box(96, 64, "center", 0, "x") == (16, 0, 80, 64)
    assert crop_box(64, 96, "center", 0, "x") == (0, 16, 64, 80)
    boxes = {crop_box(200, 64, "random", 7, f"k{i}") for i in range(20)}
    assert len(boxes) > 5 and all(b[2] - b[0] == 64 and 0 <= b[0] <= 136 for b in boxes)
    assert crop_box(200, 64, "random", 7, "k1") == crop_box(200, 64, "random", 7, "k1")
    assert crop_box(200, 64, "random", 8, "k1") != crop_box(200, 64, "random", 7, "k1") or \
        crop_box(200, 64, "random", 8, "k2") != crop_box(200, 64, "random", 7, "k2")


def test_write_then_read_roundtrip(tmp_path):
    frames = moving_frames(5, 32, 48)
    write_mp4(tmp_path / "w.mp4", frames, fps=5)
    back = read_frames_at(tmp_path / "w.mp4", [k / 5 for k in range(5)])
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6


def test_same_frames_give_the_same_bytes_after_other_decoding(tmp_path):
    """Clips are checked byte for byte after a kill and a re-run (tests/test_video_ingest.py). With x264's
    macroblock-tree rate control, small clips (32x32, 48x48) encoded after the process had decoded other
    videos came out different in up to 17 encodes of 150; `write_mp4` turns it off. The loop below
    interleaves decoding and encoding as a curation worker does, and every encode must agree."""
    sources = [make_video(tmp_path / "a.mp4", moving_frames(12, 64, 96, seed=1), fps=10),
               make_video(tmp_path / "b.avi", moving_frames(6, 64, 64, seed=3), fps=5, codec="mpeg4", fmt="avi"),
               make_video(tmp_path / "c.mkv", moving_frames(9, 48, 48, seed=5), fps=10, fmt="matroska")]
    clips = {size: moving_frames(3, size, size, seed=size) for size in (32, 48)}
    seen: dict[int, set[bytes]] = {size: set() for size in clips}
    for i in range(150):
        for _ in iter_resampled(sources[i % len(sources)], 5.0):
            pass
        for size, frames in clips.items():
            write_mp4(tmp_path / "clip.mp4", frames, fps=5)
            seen[size].add((tmp_path / "clip.mp4").read_bytes())
    assert {size: len(v) for size, v in seen.items()} == {32: 1, 48: 1}
