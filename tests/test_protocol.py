"""The paper's protocol (stage 85) at tiny scale: each table's command samples, evaluates and writes its table.

A tiny run made here in the real formats: an image manifest with captions and a test split, a clip
manifest split by video, token sets from stage 50, a tiny VQGAN, an AR image renderer with text and
a NAR video renderer (trainer export format), and the random metric networks of tests/metric_weights.py.
"""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from model.config import preset
from model.renderer import Renderer
from model.vqgan import VQGAN, VQGANConfig
from pipeline.config import ConfigError
from pipeline.evaluation import protocol
from pipeline.formats import manifest
from pipeline.formats.text_tokenizer import byte_level
from pipeline.formats.video_io import probe, write_mp4
from pipeline.formats.vqgan_io import save_vqgan
from pipeline.tokens import tokenize
from pipeline.training.export import write_export
from tests.metric_weights import SMALL

VQ = dict(ch=32, ch_mult=[1, 1], num_res_blocks=1, attn_resolutions=[], z_channels=8, embed_dim=8, n_embed=256,
          norm_groups=8, resolution=16)
COLOURS = ("red", "green", "blue", "grey")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    rng = np.random.default_rng(0)
    rows, clips = [], []
    for i in range(8):  # 20 x 24 pictures, a 16 x 16 crop each; 5 test, 3 train
        img = np.full((20, 24, 3), 40, np.uint8)
        img[..., i % 3] = 200
        img = (img + rng.integers(0, 30, img.shape)).astype(np.uint8)
        Image.fromarray(img).save(root / f"im{i}.png")
        rows.append({"id": f"img-{i}", "path": str(root / f"im{i}.png"), "source": "t", "width": 24, "height": 20,
                     "crop": [4, 2, 20, 18], "size": 16, "caption": f"a {COLOURS[i % 4]} field number {i}",
                     "split": "test" if i < 5 else "train"})
    for i in range(5):  # 5-frame clips of 4 videos (clips 2 and 3 of one): 1 train video (the split is by video)
        frames = np.stack([np.roll(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), t, axis=1) for t in range(5)])
        write_mp4(root / f"c{i}.mp4", frames, fps=5)
        clips.append({"id": f"clip-{i}", "path": str(root / f"c{i}.mp4"), "source": f"v{i}",
                      "video_id": f"vid-{2 if i == 3 else i}", "start": 0.0, "fps": 5.0, "frames": 5, "size": 16,
                      "caption": "", "split": "test" if i else "train"})
    run_dir = root / "run"
    manifest.write_rows(run_dir / "data/images/manifest.parquet", rows, manifest.IMAGE_COLUMNS)
    manifest.write_rows(run_dir / "data/videos/kept.parquet", clips, manifest.CLIP_COLUMNS)
    torch.manual_seed(0)
    save_vqgan(VQGAN(VQGANConfig(**VQ)).eval(), root / "vqgan.safetensors")
    tok = root / "text_tokenizer.json"
    byte_level().save(tok)
    image = preset("tiny", n_layer=1, d_model=32, n_head=2, vocab_size=256, expand=(1, 1, 0), text_vocab_size=257,
                   text_len=24)
    video = preset("tiny", n_layer=1, d_model=32, n_head=2, vocab_size=256, expand=(1, 1, 1), text_vocab_size=0,
                   renderer="nar", tie_embeddings=True)
    for cfg, folder, t in ((image, "export", tok), (video, "video_export", None)):
        write_export({k: v.detach().clone() for k, v in Renderer(cfg).state_dict().items()}, cfg, root / folder, t,
                     {"checkpoint": "test"})
    base = {"run_dir": "run", "seed": 1,
            "vqgan": {"preset": "tiny_f16", "overrides": VQ, "weights": str(root / "vqgan.safetensors")},
            "tokenize": {"batch_size": 8, "shard_size": 8},
            "sample": {"export_dir": "export", "progress": False, "device": "cpu"},
            "evaluate": {"block_size": 8, "inception_size": SMALL, "fid_method": "eigen", "device": "cpu",
                         "is_splits": 2, "fvd_size": 32},
            "protocol": {"table1": {"count": 3, "batch_size": 2},
                         "table2": {"count": 3, "frames": 4, "export_dir": "video_export"},
                         "table3": {"count": 3, "sides": ["right", "up"], "batch_size": 2}}}
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(base))
    assert tokenize.main(["--config", str(config)]) == 0  # tokens/{images,videos}/{train,test}
    return root, base


def configure(root, base, name, **evaluate):
    raw = json.loads(json.dumps(base))
    raw["evaluate"].update(evaluate)
    path = root / name
    path.write_text(yaml.safe_dump(raw))
    return path


def read_table(root, name):
    folder = root / "run" / "protocol" / name
    return (folder / f"{name}.md").read_text(), json.loads((folder / f"{name}.json").read_text()), folder


def test_table1_command_samples_test_captions_at_both_sizes_and_writes_its_table(run, weights_dir, clip_dir):
    root, base = run
    config = configure(root, base, "t1.yaml", inception_weights=str(weights_dir / "pt_inception-fid.pth"),
                       clip_model=str(clip_dir))
    # Block-FID (x4) is left to the test below: each 2048-d Fréchet distance costs seconds on a 2-core machine
    raw = yaml.safe_load(config.read_text())
    raw["protocol"]["table1"]["x4"] = False
    config.write_text(yaml.safe_dump(raw))
    assert protocol.main(["table1", "--config", str(config)]) == 0
    md, table, folder = read_table(root, "table1")
    samples = folder / "samples"
    # the first 3 test captions, each image against its own caption, at the training size
    assert sorted(p.stem for p in (samples / "t2i").glob("*.png")) == ["img-0", "img-1", "img-2"]
    assert json.loads((samples / "t2i" / "img-1.json").read_text())["prompt"] == "a green field number 1"
    assert Image.open(samples / "t2i" / "img-2.png").size == (16, 16)
    # the paper's rows, then ours with every column measured
    assert [r["method"] for r in table["paper"]] == ["Taming [8]", "MaskGIT [2]", "Our (AR)"]
    assert table["paper"][2]["values"] == {"block_fid": 9.71, "block_fid_x4": 15.65, "inception_score": 4.98,
                                           "clip_sim": 0.2807}
    (ours,) = table["ours"]
    assert ours["method"] == "AR" and ours["skipped"] == {"block_fid_x4": "not measured"}
    assert {k for k, v in ours["values"].items() if v is not None} == {"block_fid", "inception_score", "clip_sim"}
    assert ours["values"]["block_fid_x4"] is None  # null in the JSON, "skipped (1)" with its reason in the Markdown
    assert ours["values"]["block_fid"] > 0 and -1 <= ours["values"]["clip_sim"] <= 1
    row = json.loads((folder / "eval" / "t2i.json").read_text())["metrics"]
    assert row["block_fid"]["block_stride"] == 4  # the default reading: half-block overlap
    assert row["block_fid"]["reference_images"] == 5 and row["clip_sim"]["images"] == 3
    # what needs no weights: bits per token with and without the captions, and speed
    bits = {b["label"]: b for b in table["bits_per_token"]}
    assert {b["captions"] for b in bits.values()} == {"own", "dropped"}
    assert all(0 < b["bits_per_token"] < 9 and b["items"] == 5 for b in bits.values())
    assert table["speed"]["t2i"]["outputs"] == 3 and table["speed"]["t2i"]["tokens_per_second"] > 0
    assert "| Our (AR) (paper) | 9.71 | 15.65 | 4.98 | 0.2807 |" in md and "| AR (this run) | **" in md


def test_table1_shifted_reading_makes_larger_images_and_trims_them(run):
    root, base = run
    raw = json.loads(json.dumps(base))
    raw["protocol"] = {"out_dir": "protocol-shifted", "table1": {"count": 2, "block_fid": "shifted"}}
    config = root / "shifted.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert protocol.main(["--config", str(config)]) == 0  # every configured table: here only table1
    folder = root / "run" / "protocol-shifted" / "table1"
    # one 8-pixel block larger than the training size (16 x 16) and than x4 (16 x 64)
    assert Image.open(folder / "samples" / "t2i" / "img-0.png").size == (24, 24)
    assert Image.open(folder / "samples" / "t2i-x4" / "img-1.png").size == (72, 24)
    settings = json.loads((folder / "eval" / "t2i-x4.json").read_text())["config"]
    assert settings["generated_region"] == [4, 4, 68, 20] and settings["block_stride"] == 8
    table = json.loads((folder / "table1.json").read_text())
    reason = "no Inception weights configured: set evaluate.inception_weights"
    assert table["ours"][0]["skipped"] == {"block_fid": reason, "block_fid_x4": reason, "inception_score": reason,
                                           "clip_sim": "no CLIP model configured: set evaluate.clip_model"}
    md = (folder / "table1.md").read_text()
    assert "skipped (1)" in md and f"(1) {reason}" in md and "shifted" in md


def test_table2_fvd_end_to_end_on_test_clips_of_the_configured_length(run, weights_dir):
    root, base = run
    config = configure(root, base, "t2.yaml", i3d_weights=str(weights_dir / "rgb_imagenet.pt"))
    assert protocol.main(["table2", "--config", str(config)]) == 0
    md, table, folder = read_table(root, "table2")
    made = sorted((folder / "samples" / "i2v").glob("*.mp4"))
    # one clip per test video (clip-3 shares clip-2's video), never the train video's
    assert [p.stem for p in made] == ["clip-1", "clip-2", "clip-4"]
    assert all(probe(p).frame_count == 4 for p in made)  # 1 given + 3 predicted = the configured length
    fvd = json.loads((folder / "eval" / "i2v.json").read_text())["metrics"]["fvd"]
    assert fvd["frames"] == 4 and fvd["generated_clips"] == 3 and fvd["reference_clips"] == 3  # those 3 clips
    assert table["ours"][0]["values"]["fvd"] == pytest.approx(fvd["value"]) and fvd["value"] > 0
    assert [r["values"]["fvd"] for r in table["paper"]] == [143.76, 368.16, 165.39, 62.57]
    bits = [b for b in table["bits_per_token"]]
    assert bits[0]["items"] == 4 and bits[1]["tokens"] == bits[0]["tokens"] * 4 // 5  # frames 1-4 of 5
    # clips shorter than the measured length are a configuration error, not a silent mismatch
    raw = yaml.safe_load(config.read_text())
    raw["protocol"]["table2"]["frames"] = 6
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="measures 6-frame clips but the test clips of .* have \\[5\\] frames"):
        protocol.run_table(protocol.load_config(config), "table2")


def test_table3_shards_over_ranks_and_measures_only_the_generated_part(run, monkeypatch):
    root, base = run
    config = configure(root, base, "t3.yaml")
    # rank 1 samples its share and stops; rank 0 samples the rest, finds rank 1 done, evaluates and writes
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert protocol.main(["table3", "--config", str(config)]) == 0
        if rank == 1:
            assert not (root / "run" / "protocol" / "table3" / "table3.json").exists()
    md, table, folder = read_table(root, "table3")
    for job in ("right-notext", "right-text", "up-notext", "up-text"):
        assert sorted(p.stem for p in (folder / "samples" / job).glob("*.png")) == ["img-0", "img-1", "img-2"]
    assert json.loads((folder / "samples" / "up-text" / "img-0.json").read_text())["prompt"] == "a red field number 0"
    assert json.loads((folder / "samples" / "up-notext" / "img-0.json").read_text())["prompt"] == ""
    settings = json.loads((folder / "eval" / "up-text.json").read_text())["config"]
    assert settings["generated_region"] == settings["reference_region"] == [0, 0, 16, 8]
    assert [r["method"] for r in table["ours"]] == ["AR w/o text", "AR w/ text"]
    assert set(table["ours"][0]["skipped"]) == {"right", "left", "down", "up"}  # no Inception; left/down not run
    bits = {b["label"]: b for b in table["bits_per_token"]}
    up = bits["AR w/ text, up: the generated part"]
    assert up["direction"] == "right-up-forward" and up["captions"] == "own"
    assert up["tokens"] == 5 * 2 * 16  # 5 held-out images x the top row of 2 patches x 16 tokens
    assert bits["AR w/o text, up: the generated part"]["captions"] == "dropped"
    # run again on one rank: everything is there, nothing is sampled again
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    before = (folder / "samples" / "right-text" / "img-0.png").stat().st_mtime_ns
    assert protocol.main(["table3", "--config", str(config)]) == 0
    assert (folder / "samples" / "right-text" / "img-0.png").stat().st_mtime_ns == before
    assert json.loads((folder / "samples" / ".done.json").read_text())["written"] == []


def test_unconfigured_table_is_an_error(run, tmp_path):
    root, base = run
    raw = json.loads(json.dumps(base))
    raw["protocol"] = {"table1": {"count": 1}}
    config = root / "only1.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="protocol.table3 is not configured"):
        protocol.run_table(protocol.load_config(config), "table3")
    assert protocol.main(["table3", "--config", str(config)]) == 1  # pipeline.errors: the one error line
