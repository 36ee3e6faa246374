"""Stage 30: a tiny random BLIP from a local folder captions the manifest offline; metadata mode; ranks."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import yaml

from pipeline.curation import caption, ingest_images
from pipeline.formats.manifest import IMAGE_COLUMNS, load_image_crop, read_rows
from tests.test_ingest_images import encode, noise

WORDS = ["sky", "mountain", "lake", "tree", "river", "cloud", "snow", "field", "sea", "hill", "a", "the", "of",
         "and", "with", "over", "at", "dusk", "green", "blue"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]  # ids 0..5, as in BERT's layout


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A random BLIP captioner saved with save_pretrained, with a BERT tokenizer built from our vocab file."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("blip")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n")
    tokenizer = BertTokenizer(str(vocab))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder start token
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
             "initializer_range": 0.2}  # a wide init so that different images get different captions
    config = BlipConfig(
        text_config={**small, "vocab_size": len(SPECIAL) + len(WORDS), "encoder_hidden_size": 32,
                     "max_position_embeddings": 64, "pad_token_id": 0, "sep_token_id": 3, "eos_token_id": 3,
                     "bos_token_id": 5},
        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=32)
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def offline(monkeypatch):
    """No network: HF_HUB_OFFLINE=1, and any socket connection fails the test; one torch thread."""
    import huggingface_hub.constants
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(self, address, *args, **kwargs):
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's 2 cores are shared; OpenMP spinning is slower
    yield
    torch.set_num_threads(threads)


def ingest(tmp_path: Path, n: int = 7) -> Path:
    """A folder of n images (one with a caption in metadata.jsonl) ingested; returns the run dir."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        (src / f"{i}.png").write_bytes(encode(noise(48 + 4 * i, 48, seed=i), "PNG"))
    (src / "metadata.jsonl").write_text('{"file_name": "0.png", "caption": "a lake at dusk"}\n')
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "ingest_images": {
        "sources": [{"kind": "folder", "path": str(src)}], "min_side": 48, "size": 48, "workers": 0}}))
    assert ingest_images.main(["--config", str(cfg)]) == 0
    return tmp_path / "run"


def caption_config(path: Path, run_dir: Path, **section) -> Path:
    path.write_text(yaml.safe_dump({"run_dir": str(run_dir), "caption": section}))
    return path


MODEL = {"mode": "model", "batch_size": 3, "num_beams": 1, "min_new_tokens": 2, "max_new_tokens": 6,
         "chunk_size": 2, "image_side": 40, "split": {"test_count": 2}}


def test_tiny_blip_captions_offline_and_resumes_and_shards(tmp_path, tiny_blip, offline, monkeypatch):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run = ingest(tmp_path)
    manifest = run / "data/images/manifest.parquet"
    before = read_rows(manifest, IMAGE_COLUMNS)
    two_ranks = tmp_path / "run2/data/images"
    two_ranks.mkdir(parents=True)
    shutil.copy(manifest, two_ranks / "manifest.parquet")

    cfg = caption_config(tmp_path / "c.yaml", run, model_dir=str(tiny_blip), **MODEL)
    assert caption.main(["--config", str(cfg)]) == 0
    rows = read_rows(manifest, IMAGE_COLUMNS)
    assert [r["id"] for r in rows] == [r["id"] for r in before]
    assert rows[0]["caption"] == "a lake at dusk"  # a source caption is kept
    assert sorted(r["split"] for r in rows) == ["test"] * 2 + ["train"] * 5

    # the same model called directly, one image at a time, gives the same captions
    processor = AutoProcessor.from_pretrained(tiny_blip, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_blip, local_files_only=True).eval()
    from PIL import Image

    for r in rows[1:]:
        pixels = Image.fromarray(load_image_crop(r["path"], r["crop"], MODEL["image_side"]))
        with torch.inference_mode():
            out = model.generate(**processor(images=[pixels], return_tensors="pt"), num_beams=1,
                                 do_sample=False, min_new_tokens=2, max_new_tokens=6)
        want = " ".join(processor.batch_decode(out, skip_special_tokens=True)[0].split())
        assert want and r["caption"] == want
        assert set(want.split()) <= set(WORDS)
    assert len({r["caption"] for r in rows[1:]}) > 1  # the captions depend on the image

    first = manifest.read_bytes()
    assert caption.main(["--config", str(cfg)]) == 0  # nothing left to caption: same manifest
    assert manifest.read_bytes() == first

    cfg2 = caption_config(tmp_path / "c2.yaml", tmp_path / "run2", model_dir=str(tiny_blip), **MODEL)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert caption.main(["--config", str(cfg2)]) == 0
    assert sorted(p.name for p in (two_ranks / "captions").glob("*.done")) == ["chunk-000001.done"]
    monkeypatch.setenv("RANK", "0")
    assert caption.main(["--config", str(cfg2)]) == 0
    assert (two_ranks / "manifest.parquet").read_bytes() == first


def test_echoed_prompt_is_removed(tiny_blip, offline):
    cfg = caption.CaptionConfig(**{**MODEL, "split": caption.split.SplitConfig()}, model_dir=str(tiny_blip),
                                prompt="the sky")
    captioner = caption.Captioner(cfg, tiny_blip)
    images = [noise(40, 40, seed=s) for s in (1, 2)]
    raw_inputs = captioner.processor(images=images, text=["the sky"] * 2, return_tensors="pt")
    generated = captioner.model.generate(**raw_inputs, num_beams=1, max_new_tokens=6, min_new_tokens=2)
    raw = captioner.processor.batch_decode(generated, skip_special_tokens=True)
    assert all(t.startswith("the sky") for t in raw)  # BLIP repeats its prompt
    assert captioner(images) == [" ".join(t.split())[len("the sky"):].strip() for t in raw]
    assert caption.clean_caption("  A  picture of  a lake , at dusk ", "a picture of") == "a lake, at dusk"


def test_metadata_mode_keeps_source_captions_and_rejects_the_rest(tmp_path, caplog):
    run = ingest(tmp_path, n=4)
    cfg = caption_config(tmp_path / "c.yaml", run, mode="metadata", split={"test_fraction": 0.0})
    assert caption.main(["--config", str(cfg)]) == 0
    out = run / "data/images"
    rows = read_rows(out / "manifest.parquet", IMAGE_COLUMNS)
    assert [(r["caption"], r["split"]) for r in rows] == [("a lake at dusk", "train")]
    rejects = read_rows(out / "caption_rejects.parquet")
    assert sorted(Path(r["path"]).name for r in rejects) == ["1.png", "2.png", "3.png"]
    assert {r["reason"] for r in rejects} == {"no_caption"}
    assert caption.main(["--config", str(cfg)]) == 0  # a re-run keeps the earlier rejects
    assert len(read_rows(out / "caption_rejects.parquet")) == 3


def test_no_captions_and_no_captioner_fails_clearly(tmp_path, capsys):
    run = ingest(tmp_path, n=2)
    (tmp_path / "src/metadata.jsonl").unlink()  # the changed source rebuilds the manifest, captionless
    assert ingest_images.main(["--config", str(tmp_path / "ingest.yaml")]) == 0
    assert [r["caption"] for r in read_rows(run / "data/images/manifest.parquet")] == ["", ""]
    cfg = caption_config(tmp_path / "c.yaml", run)  # mode defaults to metadata
    capsys.readouterr()
    assert caption.main(["--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "pipeline.curation.caption: error: " in err and "no image in" in err and "no captioner is configured" in err
    cfg = caption_config(tmp_path / "d.yaml", run, mode="model")
    assert caption.main(["--config", str(cfg)]) == 1
    assert "mode: model needs model_dir" in capsys.readouterr().err
    cfg = caption_config(tmp_path / "e.yaml", run, mode="model", model_dir=str(tmp_path / "nowhere"))
    assert caption.main(["--config", str(cfg)]) == 1
    assert f"not a folder: {tmp_path / 'nowhere'}" in capsys.readouterr().err
