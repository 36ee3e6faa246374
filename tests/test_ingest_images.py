"""Image ingest over a corpus of malformed and odd files: nothing crashes, every file is accounted for."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.curation import ingest_images
from pipeline.curation.image_checks import CheckSettings, check_image, crop_plan
from pipeline.formats.manifest import IMAGE_COLUMNS, load_image_crop, read_rows, stable_id


def noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": (3,), "RGBA": (4,), "LA": (2,), "L": ()}[mode]
    return Image.fromarray(rng.integers(0, 256, (h, w, *channels), dtype=np.uint8), mode)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels but which holds almost no data (a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


def make_corpus(root: Path) -> dict[str, str]:
    """Write the odd-file corpus under root; returns {relative path: expected outcome} ("kept" or a reason).

    Settings it is meant for: min_side 48, max_image_pixels 40000 (see CORPUS_CONFIG).
    """
    expect: dict[str, str] = {}

    def put(rel: str, data: bytes, outcome: str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        expect[rel] = outcome

    put("good.jpg", encode(noise(80, 64), "JPEG"), "kept")
    put("zero.jpg", b"", "empty_file")
    jpg = encode(noise(80, 64, seed=1), "JPEG")
    put("truncated.jpg", jpg[: len(jpg) // 2], "truncated")
    png = encode(noise(80, 64, seed=2), "PNG")
    put("truncated.png", png[: len(png) // 2], "truncated")
    put("text.jpg", b"this is not an image\n" * 5, "not_an_image")
    put("png_named.jpg", encode(noise(70, 60, seed=3), "PNG"), "kept")
    put("cmyk.jpg", encode(noise(64, 72, seed=4).convert("CMYK"), "JPEG"), "kept")
    deep16 = np.random.default_rng(5).integers(0, 65536, (60, 66)).astype(np.uint16)
    put("sixteen.png", encode(Image.fromarray(deep16), "PNG"), "kept")
    put("gray.png", encode(noise(64, 64, "L", 6), "PNG"), "kept")
    put("palette_trans.png", encode(noise(64, 64, seed=7).quantize(16), "PNG", transparency=0), "kept")
    put("rgba.png", encode(noise(64, 64, "RGBA", 8), "PNG"), "kept")
    put("gray_alpha.png", encode(noise(64, 50, "LA", 9), "PNG"), "kept")
    rotated = noise(96, 64, seed=10)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation 6: display rotated 90 degrees clockwise
    put("rotated.jpg", encode(rotated, "JPEG", exif=exif.tobytes()), "kept")
    put("tiny.png", encode(noise(16, 16, seed=11), "PNG"), "too_small")
    put("bomb.png", png_header_only(100_000, 100_000), "decompression_bomb")  # > 2x limit: PIL error
    put("bomb_warn.png", encode(noise(250, 250, seed=12), "PNG"), "decompression_bomb")  # 1x..2x: PIL warning
    frames = [noise(64, 64, seed=s).quantize(32) for s in (13, 14)]
    put("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        "animated")
    put("still.gif", encode(noise(64, 64, seed=15).quantize(32), "GIF"), "kept")
    put("photo.webp", encode(noise(64, 64, seed=16), "WEBP"), "kept")
    put("image.bmp", encode(noise(64, 64, seed=17), "BMP"), "kept")
    put("image.tif", encode(noise(64, 64, seed=18), "TIFF"), "kept")
    put("camera_mpo.jpg", encode(noise(80, 64, seed=20), "MPO", save_all=True,  # photo + preview frame
                                 append_images=[noise(40, 32, seed=21)]), "kept")
    put("nested/a/b/deep.jpg", encode(noise(64, 80, seed=19), "JPEG"), "kept")
    put("bad_marker.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2, "undecodable")  # JPEG magic, junk
    put("._good.jpg", b"\x00\x05\x16\x07" + b"\x00" * 60, "not_an_image")  # macOS AppleDouble file
    put("README.txt", b"LHQ\n", "not_an_image")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("inner.jpg", encode(noise(64, 64), "JPEG"))
    put("part1.zip", archive.getvalue(), "archive_not_extracted")
    os.symlink(root / "good.jpg", root / "link.jpg")
    expect["link.jpg"] = "symlink_duplicate"
    os.symlink(root / "nowhere.jpg", root / "broken.jpg")
    expect["broken.jpg"] = "broken_symlink"
    os.symlink(root / "nested", root / "dirlink")
    expect["dirlink"] = "symlink_to_directory"
    os.mkfifo(root / "pipe.jpg")  # opening it would block forever: must be rejected unopened
    expect["pipe.jpg"] = "not_a_regular_file"
    (root / "metadata.jsonl").write_text(
        json.dumps({"file_name": "good.jpg", "caption": "a good photo"}) + "\n{not json\n")
    (root / "nested/a/metadata.jsonl").write_text(json.dumps({"file_name": "b/deep.jpg", "caption": "deep"}) + "\n")
    return expect


CORPUS_CONFIG = {"min_side": 48, "size": 32, "max_image_pixels": 40000}


def write_config(path: Path, run_dir: Path, section: dict, **top) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"run_dir": str(run_dir), **top, "ingest_images": section}))
    return path


def outcomes(out_dir: Path, root: Path) -> dict[str, str]:
    got: dict[str, str] = {}
    for r in read_rows(out_dir / "manifest.parquet"):
        rel = os.path.relpath(r["path"], root)
        assert rel not in got, f"{rel} listed twice"
        got[rel] = "kept"
    for r in read_rows(out_dir / "rejects.parquet"):
        rel = os.path.relpath(r["path"], root)
        assert rel not in got, f"{rel} listed twice"
        got[rel] = r["reason"]
    return got


def test_corpus_of_odd_files_is_fully_accounted_for(tmp_path):
    src = tmp_path / "lhq"
    expect = make_corpus(src)
    assert len(expect) >= 20
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "run", {
        "sources": [{"kind": "folder", "path": str(src)}], "workers": 0, "chunk_size": 7, **CORPUS_CONFIG})
    assert ingest_images.main(["--config", str(cfg)]) == 0
    out = tmp_path / "run/data/images"
    assert outcomes(out, src) == expect  # each file once, with the expected outcome

    rows = {os.path.relpath(r["path"], src): r for r in read_rows(out / "manifest.parquet", IMAGE_COLUMNS)}
    rotated = rows["rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (64, 96)  # the oriented size, not the stored 96x64
    assert rotated["crop"] == [0, 16, 64, 80]
    assert rows["png_named.jpg"]["format"] == "PNG"
    assert rows["good.jpg"]["caption"] == "a good photo"
    assert rows["nested/a/b/deep.jpg"]["caption"] == "deep"  # file_name relative to its metadata file
    assert rows["gray.png"]["caption"] == ""
    for rel, r in rows.items():
        assert r["id"] == stable_id("img", rel)
        assert r["size"] == 32 and r["split"] == ""
        x0, y0, x1, y1 = r["crop"]
        assert x1 - x0 == y1 - y0 == min(r["width"], r["height"])
        pixels = load_image_crop(r["path"], r["crop"], r["size"])  # what the tokenizer will read
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    ids = [r["id"] for r in read_rows(out / "manifest.parquet")]
    assert ids == [rows[k]["id"] for k in sorted(rows)]  # ordered by relative path
    rejects = read_rows(out / "rejects.parquet")
    bomb = next(r for r in rejects if r["path"].endswith("bomb.png"))
    assert "10000000000 pixels" in bomb["detail"]
    assert json.loads((out / "ingest.done").read_text())["kept"] == len(rows)


def test_animated_first_frame_policy_and_exif_dimensions(tmp_path):
    frames = [noise(64, 50, seed=s).quantize(32) for s in (1, 2, 3)]
    gif = tmp_path / "anim.gif"
    gif.write_bytes(encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50))
    first = check_image(gif, "img-x", CheckSettings(min_side=48, animated="first_frame"))
    assert (first.width, first.height, first.format) == (64, 50, "GIF")
    assert check_image(gif, "img-x", CheckSettings(min_side=48)).reason == "animated"
    # the default bomb limit is PIL's; a lower one rejects before decoding
    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(5000, 5000))
    assert check_image(big, "img-y", CheckSettings(min_side=1, max_image_pixels=10**6)).reason == \
        "decompression_bomb"


def test_random_crop_is_seeded_per_id_and_inside_the_image():
    plans = {crop_plan(300, 120, "random", 7, f"img-{i}") for i in range(50)}
    assert len(plans) > 10  # positions vary between ids
    for x0, y0, x1, y1 in plans:
        assert 0 <= x0 and x1 <= 300 and (y0, y1) == (0, 120) and x1 - x0 == 120
    assert crop_plan(300, 120, "random", 7, "img-3") == crop_plan(300, 120, "random", 7, "img-3")
    assert crop_plan(300, 120, "center", 7, "img-3") == (90, 0, 210, 120)
    seeds = {crop_plan(300, 120, "random", s, "img-3") for s in range(20)}
    assert len(seeds) > 5  # and with the run seed


def test_config_errors_and_missing_section(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    cfg = write_config(tmp_path / "a.yaml", tmp_path / "run", {"sources": [{"kind": "folder", "path": "nope"}],
                                                               "min_sid": 3})
    assert ingest_images.main(["--config", str(cfg)]) == 1
    assert "unknown key(s) ['min_sid']" in capsys.readouterr().err  # one line (pipeline.errors)
    cfg = write_config(tmp_path / "b.yaml", tmp_path / "run", {"sources": [{"kind": "folder", "path": "nope"}]})
    assert ingest_images.main(["--config", str(cfg)]) == 1
    assert f"folder not found: {tmp_path / 'nope'}" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text(f"run_dir: {tmp_path / 'run'}\n")
    assert ingest_images.main(["--config", str(tmp_path / "c.yaml")]) == 0
    assert "nothing to do" in caplog.text


def test_nothing_usable_is_a_clear_failure_with_rejects_written(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.png").write_bytes(encode(noise(20, 20), "PNG"))
    cfg = write_config(tmp_path / "a.yaml", tmp_path / "run", {"sources": [{"kind": "folder", "path": str(src)}],
                                                               "workers": 0})
    assert ingest_images.main(["--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "no usable image among 1 item(s)" in err and "too_small" in err
    assert read_rows(tmp_path / "run/data/images/rejects.parquet")[0]["reason"] == "too_small"
    assert not (tmp_path / "run/data/images/manifest.parquet").exists()


@pytest.mark.parametrize("workers", [2])
def test_process_pool_gives_the_same_manifest_as_in_process(tmp_path, workers):
    src = tmp_path / "src"
    for i in range(6):
        (src / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 2}/{i}.jpg").write_bytes(encode(noise(60 + i, 50, seed=i), "JPEG"))
    (src / "bad.jpg").write_bytes(b"nope")
    outs = []
    for w in (0, workers):
        cfg = write_config(tmp_path / f"{w}.yaml", tmp_path / f"run{w}", {
            "sources": [{"kind": "folder", "path": str(src)}], "workers": w, "chunk_size": 3, "min_side": 48})
        assert ingest_images.main(["--config", str(cfg)]) == 0
        outs.append((tmp_path / f"run{w}/data/images/manifest.parquet").read_bytes())
    assert outs[0] == outs[1]
    assert len(read_rows(tmp_path / "run0/data/images/manifest.parquet")) == 6
