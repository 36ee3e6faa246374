"""Stage 70 end to end on tiny random models saved in the real export formats."""

import json
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from model.config import preset
from model.renderer import Renderer
from model.vqgan import VQGAN, VQGANConfig
from pipeline.formats.text_tokenizer import byte_level
from pipeline.formats.vqgan_io import save_vqgan
from pipeline.sampling import sample
from pipeline.training.export import write_export

VQ = dict(ch=32, ch_mult=[1, 1], num_res_blocks=1, attn_resolutions=[], z_channels=8, embed_dim=8, n_embed=256,
          norm_groups=8, resolution=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    cfg = preset("tiny", renderer="nar", tie_embeddings=True, expand=(1, 1, 1))
    tok = root / "text_tokenizer.json"
    byte_level().save(tok)
    write_export({k: v.detach().clone() for k, v in Renderer(cfg).state_dict().items()}, cfg, root / "export", tok,
                 {"checkpoint": "test"})
    vq = VQGAN(VQGANConfig(**VQ)).eval()
    save_vqgan(vq, root / "vqgan.safetensors")
    return root, vq


def write_config(tmp_path, models_root, jobs, **extra):
    cfg = {"run_dir": str(tmp_path / "run"), "seed": 5,
           "vqgan": {"preset": "tiny_f16", "overrides": VQ, "weights": str(models_root / "vqgan.safetensors")},
           "sample": {"export_dir": str(models_root / "export"), "progress": False, "jobs": jobs, **extra}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_batch_from_a_prompt_file_writes_one_image_and_json_per_prompt(tmp_path, models):
    root, _ = models
    (tmp_path / "prompts.txt").write_text("a red barn\n\nsnow on pines\nthe sea at night\n")
    (tmp_path / "more.jsonl").write_text('{"prompt": "a desert road", "name": "road", "seed": 11}\n'
                                         'not json\n{"prompt": "dunes"}\n'
                                         '{"prompt": "fog", "name": "t0.5"}\n{"prompt": "fog", "name": "t0.9"}\n')
    jobs = [{"name": "plain", "mode": "batch", "prompts_file": "prompts.txt", "size": [16, 24], "batch_size": 2},
            {"name": "lines", "mode": "batch", "prompts_file": "more.jsonl", "patches": [2, 2],
             "sampling": {"temperature": 0.5, "top_k": 20}}]
    cfg = write_config(tmp_path, root, jobs)
    assert sample.main(["--config", str(cfg)]) == 0
    out = tmp_path / "run" / "samples"
    plain = sorted(p.name for p in (out / "plain").iterdir())
    assert plain == ["00000.json", "00000.png", "00001.json", "00001.png", "00002.json", "00002.png"]
    prompts = []
    for i in range(3):
        meta = json.loads((out / "plain" / f"{i:05d}.json").read_text())
        prompts.append(meta["prompt"])
        with Image.open(out / "plain" / f"{i:05d}.png") as im:
            assert im.size == (24, 16) and im.mode == "RGB"
        assert meta["size"] == [16, 24] and meta["direction"] == "down-right-forward"
        assert meta["models"]["renderer"]["sha256"] and meta["models"]["vqgan"]["sha256"]
        assert meta["batch"] == {"size": 2 if i < 2 else 1, "row": i % 2}
    assert prompts == ["a red barn", "snow on pines", "the sea at night"]
    # names with dots keep them: "t0.5" and "t0.9" are two outputs, not one file "t0.png" written twice
    assert sorted(p.name for p in (out / "lines").iterdir()) == [
        "00002.json", "00002.png", "road.json", "road.png", "t0.5.json", "t0.5.png", "t0.9.json", "t0.9.png"]
    road = json.loads((out / "lines" / "road.json").read_text())
    assert road["seed"] == 11 and road["sampling"]["top_k"] == 20 and road["prompt"] == "a desert road"
    done = json.loads((out / ".done.json").read_text())
    assert len(done["written"]) == 7 and done["rejected_prompts"][0]["line"] == 2
    # a second run finds every output with the same settings and redoes nothing
    before = (out / "plain" / "00000.png").stat().st_mtime_ns
    assert sample.main(["--config", str(cfg)]) == 0
    done = json.loads((out / ".done.json").read_text())
    assert done["written"] == [] and done["skipped"] == 7
    assert (out / "plain" / "00000.png").stat().st_mtime_ns == before
    assert not list(out.rglob(".canvas-*")) and not list(out.rglob("*.tmp"))


def test_wide_image_extension_and_video_jobs(tmp_path, models):
    root, vq = models
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "input.png")
    jobs = [{"name": "wide", "mode": "text_to_image", "prompt": "hills", "patches": [2, 16],
             "sampling": {"cfg_scale": 2.0}},
            {"name": "uncond", "mode": "unconditional", "size": [8, 16], "direction": "right-up", "count": 2},
            {"name": "ext", "mode": "extend", "input": "input.png", "input_crop": [8, 0, 24, 16], "side": "left",
             "amount": 16},
            {"name": "clip", "mode": "image_to_video", "input": "input.png", "frames": 2, "fps": 4}]
    cfg = write_config(tmp_path, root, jobs, save_codes=True)
    assert sample.main(["--config", str(cfg)]) == 0
    out = tmp_path / "run" / "samples"
    with Image.open(out / "wide.png") as im:
        assert im.size == (16 * 8, 2 * 8)
    wide = json.loads((out / "wide.json").read_text())
    assert wide["patches"] == [2, 16, 1] and wide["stats"]["patches_generated"] == 32
    assert wide["sampling"]["cfg_scale"] == 2.0
    assert (out / "uncond_000.png").is_file() and (out / "uncond_001.png").is_file()
    assert json.loads((out / "uncond_001.json").read_text())["prompt"] == ""
    # extension: the given (cropped) picture's codes are unchanged in the enlarged grid, on the right
    codes = np.load(out / "ext.codes.npy")
    with torch.no_grad():
        given = vq.encode(torch.from_numpy(picture[:, 8:24]).permute(2, 0, 1)[None].float() / 127.5 - 1)[0]
    assert codes.shape == (1, 8, 16) and np.array_equal(codes[0, :, 8:], given.numpy())
    ext = json.loads((out / "ext.json").read_text())
    assert ext["direction"] == "down-left-forward" and ext["size"] == [16, 32]
    assert ext["stats"]["patches_primed"] == 4 and ext["stats"]["patches_generated"] == 4
    with Image.open(out / "ext.png") as im:
        assert im.size == (32, 16)
    # video: 1 given + 2 predicted frames, frame 0's codes are the given frame's
    from pipeline.formats.video_io import probe

    info = probe(out / "clip.mp4")
    assert (info.width, info.height) == (24, 16)
    clip_codes = np.load(out / "clip.codes.npy")
    with torch.no_grad():
        first = vq.encode(torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 127.5 - 1)[0]
    assert clip_codes.shape == (3, 8, 12) and np.array_equal(clip_codes[0], first.numpy())
    assert json.loads((out / "clip.json").read_text())["stats"]["patches_generated"] == 2 * 6


def test_bad_jobs_are_config_errors_naming_the_job(tmp_path, models, capsys):
    root, _ = models
    cases = [
        ({"name": "a", "mode": "text_to_image", "size": [16, 16]}, "needs \\['prompt'\\]"),
        ({"name": "b", "mode": "unconditional", "size": [16, 16], "side": "left"}, "do not apply"),
        ({"name": "c", "mode": "unconditional", "size": [16, 12]}, "not whole patches"),
        ({"name": "d", "mode": "unconditional"}, "exactly one of size"),
        ({"name": "e", "mode": "extend", "input": "missing.png", "side": "up", "amount": 8}, "file not found"),
    ]
    for job, message in cases:
        cfg = write_config(tmp_path, root, [job])
        capsys.readouterr()
        assert sample.main(["--config", str(cfg)]) == 1  # one line, no traceback (pipeline.errors)
        [line] = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
        assert line.startswith("pipeline.sampling.sample: error: ") and re.search(message, line) and "jobs[" in line


def _manifests(tmp_path, rng):
    """An image manifest (16 x 16 crops, 4 test rows of 6) and a clip manifest (3 test clips of 4)."""
    from pipeline.formats import manifest
    from pipeline.formats.video_io import write_mp4

    rows, clips = [], []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        rows.append({"id": f"img-{i}", "path": str(tmp_path / f"im{i}.png"), "source": "t", "width": 16, "height": 20,
                     "crop": [0, 2, 16, 18], "size": 16, "caption": f"caption {i}",
                     "split": "train" if i in (1, 4) else "test"})
    for i in range(4):
        write_mp4(tmp_path / f"c{i}.mp4", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8), fps=5)
        clips.append({"id": f"clip-{i}", "path": str(tmp_path / f"c{i}.mp4"), "source": f"v{i}", "start": 0.0,
                      "fps": 5.0, "frames": 3, "size": 16, "caption": "", "split": "test" if i else "train"})
    manifest.write_rows(tmp_path / "images.parquet", rows, manifest.IMAGE_COLUMNS)
    manifest.write_rows(tmp_path / "clips.parquet", clips, manifest.CLIP_COLUMNS)
    return rows, clips


def test_sets_over_a_test_split_shard_over_ranks_and_resume(tmp_path, models, monkeypatch):
    root, vq = models
    rows, _ = _manifests(tmp_path, np.random.default_rng(1))
    jobs = [{"name": "t2i", "mode": "batch", "prompts_file": "images.parquet", "split": "test", "limit": 3,
             "size": [16, 32], "batch_size": 2},
            {"name": "ext", "mode": "extend", "input": "images.parquet", "split": "test", "side": "up", "amount": 8,
             "captions": True, "batch_size": 3},
            {"name": "i2v", "mode": "image_to_video", "input": "clips.parquet", "split": "test", "frames": 1}]
    cfg = write_config(tmp_path, root, jobs, save_codes=True)
    out = tmp_path / "run" / "samples"
    # two ranks, one after the other (each takes every second unit of work), give the one-rank outputs
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert sample.main(["--config", str(cfg)]) == 0
    done = [json.loads((out / f".done-rank{r}.json").read_text()) for r in (0, 1)]
    assert not set(done[0]["written"]) & set(done[1]["written"])
    test_ids = [r["id"] for r in rows if r["split"] == "test"]
    assert sorted(p.stem for p in (out / "t2i").glob("*.png")) == sorted(test_ids[:3])  # limit: the first 3
    t2i = json.loads((out / "t2i" / f"{test_ids[2]}.json").read_text())
    assert t2i["prompt"] == "caption 3" and t2i["size"] == [16, 32] and t2i["batch"] == {"size": 1, "row": 0}
    # extension set: each test image minus its top 8 pixels, grown back; the given codes are kept
    assert sorted(p.stem for p in (out / "ext").glob("*.png")) == sorted(test_ids)
    ext = json.loads((out / "ext" / "img-2.json").read_text())
    assert ext["prompt"] == "caption 2" and ext["direction"] == "right-up-forward"
    assert ext["given_box"] == [0, 8, 16, 16] and ext["generated_box"] == [0, 0, 16, 8]
    assert ext["input"] == {"path": "images.parquet", "index": 2, "id": "img-2", "split": "test"}
    assert ext["stats"]["patches_primed"] == 2 and ext["stats"]["patches_generated"] == 2
    real = np.asarray(Image.open(tmp_path / "im2.png"))[2:18].copy()
    with torch.no_grad():
        given = vq.encode(torch.from_numpy(np.ascontiguousarray(real[8:])).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert np.array_equal(np.load(out / "ext" / "img-2.codes.npy")[0, 4:], given[0].numpy())
    with Image.open(out / "ext" / "img-2.png") as im:
        assert im.size == (16, 16)
    # video set: one clip per test clip, 1 given + 1 predicted frame
    assert sorted(p.name for p in (out / "i2v").glob("*.mp4")) == ["clip-1.mp4", "clip-2.mp4", "clip-3.mp4"]
    # a third pass (one rank) finds everything done
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert sample.main(["--config", str(cfg)]) == 0
    again = json.loads((out / ".done.json").read_text())
    assert again["written"] == [] and again["skipped"] == 3 + 4 + 3


def test_set_jobs_are_checked(tmp_path, models, capsys):
    root, _ = models
    _manifests(tmp_path, np.random.default_rng(2))
    cases = [
        ({"name": "a", "mode": "extend", "input": "images.parquet", "split": "test", "side": "up", "amount": 8,
          "input_crop": [0, 0, 8, 8]}, "pick one input"),
        ({"name": "b", "mode": "batch", "prompts_file": "p.txt", "split": "test", "size": [16, 16]}, "not one"),
        ({"name": "c", "mode": "extend", "input": "images.parquet", "side": "up", "amount": 8, "limit": 2},
         "sets only"),
        ({"name": "d", "mode": "extend", "input": "images.parquet", "split": "val", "side": "up", "amount": 8},
         "no row with split 'val'"),
        ({"name": "e", "mode": "extend", "input": "images.parquet", "split": "test", "side": "left", "amount": 4},
         "not whole patches"),
    ]
    for job, message in cases:
        cfg = write_config(tmp_path, root, [job])
        capsys.readouterr()
        assert sample.main(["--config", str(cfg)]) == 1  # one line, no traceback (pipeline.errors)
        [line] = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
        assert re.search(message, line), line
