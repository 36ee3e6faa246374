"""Image ingest from a `datasets` dataset saved on disk and from URL lists (served on 127.0.0.1)."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest

from pipeline.curation import ingest_images
from pipeline.formats.manifest import read_rows, stable_id
from tests.test_ingest_images import encode, noise, write_config


def _image_dataset(tmp_path: Path):
    import datasets

    rotated = noise(120, 80, seed=3)
    exif = rotated.getexif()
    exif[0x0112] = 6
    images = [
        {"bytes": encode(noise(100, 80, seed=1), "JPEG"), "path": None},
        {"bytes": encode(noise(90, 90, seed=2), "PNG"), "path": None},
        {"bytes": encode(rotated, "JPEG", exif=exif.tobytes()), "path": None},
        None,  # a row without an image
        {"bytes": b"definitely not an image", "path": None},
        {"bytes": encode(noise(20, 20, seed=4), "PNG"), "path": None},
    ]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "name": datasets.Value("string")})
    return datasets.Dataset.from_dict({
        "image": images, "text": ["first", "second", "rotated", "none", "junk", None],
        "name": [f"n{i}" for i in range(len(images))]}, features=features), images


def test_hf_dataset_on_disk_is_exported_with_captions(tmp_path, capsys):
    import datasets

    ds, images = _image_dataset(tmp_path)
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp_path / "ds"))
    source = {"kind": "hf_dataset", "path": str(tmp_path / "ds"), "caption_column": "text"}
    cfg = write_config(tmp_path / "bad.yaml", tmp_path / "run", {"sources": [source], "min_side": 48})
    assert ingest_images.main(["--config", str(cfg)]) == 1  # two splits and none chosen
    assert "set `split` to one of ['train', 'validation']" in capsys.readouterr().err

    cfg = write_config(tmp_path / "run.yaml", tmp_path / "run", {
        "sources": [{**source, "split": "train", "id_column": "name"}], "min_side": 48, "size": 48, "workers": 0,
        "chunk_size": 4})
    assert ingest_images.main(["--config", str(cfg)]) == 0
    out = tmp_path / "run/data/images"
    rows = read_rows(out / "manifest.parquet")
    assert [r["caption"] for r in rows] == ["first", "second", "rotated"]
    assert [r["id"] for r in rows] == [stable_id("img", f"train/n{i}") for i in range(3)]
    for r, original in zip(rows, images):
        p = Path(r["path"])
        assert p.parent == out / "files" and p.read_bytes() == original["bytes"]  # stored bytes, untouched
    assert Path(rows[1]["path"]).suffix == ".png" and rows[1]["format"] == "PNG"
    assert (rows[2]["width"], rows[2]["height"]) == (80, 120)
    reasons = {r["id"]: r["reason"] for r in read_rows(out / "rejects.parquet")}
    assert reasons == {stable_id("img", "train/n3"): "missing_image", stable_id("img", "train/n4"): "not_an_image",
                       stable_id("img", "train/n5"): "too_small"}


def test_hf_dataset_single_split_with_row_numbers_and_missing_column(tmp_path, capsys):
    ds, _ = _image_dataset(tmp_path)
    ds.select([0, 1]).save_to_disk(str(tmp_path / "ds"))
    base = {"kind": "hf_dataset", "path": str(tmp_path / "ds"), "name": "lhq"}
    cfg = write_config(tmp_path / "a.yaml", tmp_path / "run", {
        "sources": [{**base, "image_column": "picture"}], "min_side": 48})
    assert ingest_images.main(["--config", str(cfg)]) == 1
    assert "image_column 'picture' not among ['image', 'text', 'name']" in capsys.readouterr().err
    cfg = write_config(tmp_path / "b.yaml", tmp_path / "run", {"sources": [base], "min_side": 48, "workers": 0})
    assert ingest_images.main(["--config", str(cfg)]) == 0
    rows = read_rows(tmp_path / "run/data/images/manifest.parquet")
    assert [r["id"] for r in rows] == [stable_id("img", f"lhq/{i:09d}") for i in range(2)]
    assert [r["caption"] for r in rows] == ["", ""]  # default caption column "caption" is absent


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Counting(_Handler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_url_lists_are_downloaded_checked_and_resumable(tmp_path, server):
    www, base, requests = server
    (www / "a.jpg").write_bytes(encode(noise(100, 70, seed=1), "JPEG"))
    (www / "b").write_bytes(encode(noise(64, 64, seed=2), "PNG"))  # no extension in the URL
    (www / "page.html").write_bytes(b"<html>not an image</html>")
    (www / "huge.png").write_bytes(encode(noise(300, 300, seed=3), "PNG"))
    lines = [
        {"url": f"{base}/a.jpg", "caption": "from the list"},
        {"url": f"{base}/b"},
        {"url": f"{base}/missing.jpg", "caption": "404"},
        {"url": f"{base}/page.html"},
        {"url": f"{base}/huge.png"},
        {"href": "no url field"},
        {"url": "ftp://example.org/x.jpg"},
        {"url": f"{base}/a.jpg", "caption": "the same URL again"},
    ]
    (tmp_path / "urls.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    (tmp_path / "urls.txt").write_text(f"# LHQ mirror\n{base}/a.jpg\n\n{base}/b\n")
    section = {"sources": [{"kind": "urls", "path": str(tmp_path / "urls.jsonl"), "name": "j"},
                           {"kind": "urls", "path": str(tmp_path / "urls.txt"), "name": "t"}],
               "min_side": 48, "size": 48, "workers": 0, "chunk_size": 3,
               "download": {"timeout_s": 5, "retries": 0, "max_bytes": 100_000, "backoff_s": 0.01}}
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "run", section)
    assert ingest_images.main(["--config", str(cfg)]) == 0
    out = tmp_path / "run/data/images"
    rows = read_rows(out / "manifest.parquet")
    assert [(r["source"], r["caption"]) for r in rows] == [
        (f"{base}/a.jpg", "from the list"), (f"{base}/b", ""), (f"{base}/a.jpg", ""), (f"{base}/b", "")]
    assert [r["id"] for r in rows[:2]] == [stable_id("img", f"j/{base}/a.jpg"), stable_id("img", f"j/{base}/b")]
    assert all(Path(r["path"]).parent == out / "files" and Path(r["path"]).is_file() for r in rows)
    assert rows[0]["path"].endswith(".jpg") and rows[1]["format"] == "PNG"
    rejects = read_rows(out / "rejects.parquet")
    got = sorted((r["reason"], r["path"]) for r in rejects)
    jsonl = tmp_path / "urls.jsonl"
    assert [g[0] for g in got] == ["bad_url_line", "bad_url_line", "bad_url_line", "download_failed",
                                   "download_failed", "duplicate_id", "not_an_image"]
    assert ("bad_url_line", f"{jsonl}:6") in got and ("bad_url_line", f"{jsonl}:9") in got
    assert ("duplicate_id", f"{base}/a.jpg") in got
    details = {r["path"]: r["detail"] for r in rejects}
    assert "404" in details[f"{base}/missing.jpg"]
    assert "size limit" in details[f"{base}/huge.png"]

    n_requests = len(requests)
    for marker in (out / "chunks").glob("*.done"):  # force every chunk to be redone
        marker.unlink()
    (out / "ingest.done").unlink()
    before = (out / "manifest.parquet").read_bytes()
    assert ingest_images.main(["--config", str(cfg)]) == 0
    assert (out / "manifest.parquet").read_bytes() == before
    downloaded_again = [p for p in requests[n_requests:] if p in ("/a.jpg", "/b", "/page.html")]
    assert downloaded_again == []  # finished downloads are kept
