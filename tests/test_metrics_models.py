"""Metric loaders on random models saved in the public file formats, and the evaluate stage.

Formats: torchvision's Inception-v3 state dict (1000 classes, AuxLogits), pytorch-fid's
(1008 classes, FID blocks), pytorch-i3d's InceptionI3d state dict, and a transformers CLIP
directory: the fixtures `weights_dir` and `clip_dir` (tests/conftest.py, made by
tests/metric_weights.py once per session).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.evaluation.metrics import extract
from pipeline.evaluation.metrics.blocks import iter_blocks
from pipeline.evaluation.metrics.fid import frechet_distance
from pipeline.evaluation.metrics.i3d import _same_padding, load_i3d
from pipeline.evaluation.metrics.inception import FIDInceptionE, InceptionFeatures, build_inception3, load_inception
from pipeline.formats import manifest
from tests.metric_weights import SMALL


# -- Inception ------------------------------------------------------------------------------------
def test_pytorch_fid_layout_loads_with_fid_blocks(weights_dir):
    state = torch.load(weights_dir / "pt_inception-fid.pth", weights_only=True)
    # the public file's names and shapes (torchvision's layout, 1008 classes, no AuxLogits)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert state["fc.weight"].shape == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in state)

    model = load_inception(weights_dir / "pt_inception-fid.pth", input_size=SMALL)
    assert model.variant == "pytorch-fid" and model.num_classes == 1008
    assert isinstance(model.net.Mixed_7c, FIDInceptionE) and model.net.Mixed_7c.pool == "max"
    assert model.net.Mixed_7b.pool == "avg"

    images = np.random.default_rng(0).integers(0, 256, (3, 64, 80, 3), dtype=np.uint8)
    feats, logits = model.extract(images)
    assert feats.shape == (3, 2048) and logits.shape == (3, 1008)
    assert np.isfinite(feats).all() and feats.std() > 1e-3
    # without the bias the logits are exactly features @ fc.weight^T (what IS uses)
    np.testing.assert_allclose(logits, feats @ state["fc.weight"].double().numpy().T, rtol=1e-4, atol=1e-4)

    # the FID blocks matter: the same weights in torchvision's plain blocks give other features
    plain = build_inception3(1008, aux_logits=False, fid_blocks=False)
    plain.load_state_dict(state)
    plain_feats, _ = InceptionFeatures(plain, "plain", input_size=SMALL).extract(images)
    assert np.abs(plain_feats - feats).max() > 1e-4


def test_torchvision_layout_loads_and_matches_torchvision_forward(weights_dir):
    path = weights_dir / "inception_v3_google.pth"
    state = torch.load(path, weights_only=True)
    assert state["AuxLogits.fc.weight"].shape == (1000, 768) and state["fc.weight"].shape == (1000, 2048)
    model = load_inception(path, input_size=SMALL)
    assert model.variant == "torchvision" and model.num_classes == 1000

    images = np.random.default_rng(1).integers(0, 256, (2, SMALL, SMALL, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    _, logits = model(x, logits_bias=True)
    reference = build_inception3(1000, aux_logits=True, fid_blocks=False)
    reference.load_state_dict(state)
    with torch.no_grad():
        want = reference.eval()(2 * x - 1)  # torchvision's own forward on [-1, 1] input
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)


def test_inception_loader_accepts_old_files_and_names_bad_ones(weights_dir, tmp_path):
    state = torch.load(weights_dir / "pt_inception-fid.pth", weights_only=True)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # pre-1.0 style file
    torch.save(old, tmp_path / "old.pth")
    assert load_inception(tmp_path / "old.pth", input_size=SMALL).variant == "pytorch-fid"

    broken = dict(state)
    del broken["Mixed_6b.branch7x7_2.conv.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="(?s)broken.pth.*Mixed_6b"):
        load_inception(tmp_path / "broken.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="junk.pth"):
        load_inception(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_inception(tmp_path / "missing.pth")


# -- I3D ------------------------------------------------------------------------------------------
def test_i3d_loader_accepts_the_pytorch_i3d_layout(weights_dir, tmp_path):
    state = torch.load(weights_dir / "rgb_imagenet.pt", weights_only=True)
    # names and shapes of the public port's rgb_imagenet.pt
    assert state["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert state["Mixed_5c.b3b.conv3d.weight"].shape == (128, 832, 1, 1, 1)
    assert state["Mixed_4f.b1b.conv3d.weight"].shape == (320, 160, 3, 3, 3)
    assert state["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1) and "logits.conv3d.bias" in state
    assert "logits.bn.weight" not in state and "Conv3d_1a_7x7.conv3d.bias" not in state

    model = load_i3d(weights_dir / "rgb_imagenet.pt")
    clips = torch.rand(2, 3, 6, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(clips)
    assert out.shape == (2, 400) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])

    # DataParallel prefixes and files without num_batches_tracked load too; wrong files are named
    torch.save({"module." + k: v for k, v in state.items() if "num_batches" not in k}, tmp_path / "dp.pt")
    with torch.no_grad():
        torch.testing.assert_close(load_i3d(tmp_path / "dp.pt")(clips), out)
    torch.save({k: v for k, v in state.items() if not k.startswith("Mixed_3b.b1b")}, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="(?s)cut.pt.*Mixed_3b.b1b"):
        load_i3d(tmp_path / "cut.pt")


@pytest.mark.parametrize("size", range(1, 20))
@pytest.mark.parametrize("kernel,stride", [(7, 2), (3, 1), (3, 2), (2, 2), (1, 1)])
def test_i3d_same_padding_matches_the_ports_rule(size, kernel, stride):
    # the port: pad = max(k - s, 0) if size % s == 0 else max(k - size % s, 0), front gets the floor half
    pad = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    assert _same_padding(size, kernel, stride) == (pad // 2, pad - pad // 2)


# -- CLIP -----------------------------------------------------------------------------------------
def test_clip_sim_from_a_local_directory(clip_dir):
    from pipeline.evaluation.metrics.clip_sim import clip_similarities, clip_weight_files, load_clip

    model, processor = load_clip(clip_dir)
    assert [p.name for p in clip_weight_files(clip_dir)] == ["model.safetensors"]
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (40, 90, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    prompts = ["a green valley at dawn", "snowy peaks " * 40]  # the second is longer than the context
    sims = clip_similarities(model, processor, images, prompts)
    assert sims.shape == (2,) and np.all(np.abs(sims) <= 1)

    # the same cosine from the model's feature functions
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True,
                       max_length=32)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    want = torch.nn.functional.cosine_similarity(img.double(), txt.double()).numpy()
    np.testing.assert_allclose(sims, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_clip(clip_dir / "nowhere")


# -- the evaluate stage ---------------------------------------------------------------------------
def _write_png(path: Path, rng, h, w, prompt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    if prompt is not None:
        path.with_suffix(".json").write_text(json.dumps({"prompt": prompt, "seed": 0}))


def _make_run(tmp_path, weights_dir, clip_dir=None, with_inception=True):
    """Generated PNGs + MP4s, a reference image manifest and a reference video folder, and a config."""
    from pipeline.formats.video_io import write_mp4

    rng = np.random.default_rng(7)
    gen = tmp_path / "run" / "samples"
    for i in range(3):
        _write_png(gen / f"sample_{i}.png", rng, 64, 96, prompt=f"a green valley number {i}" if i < 2 else None)
    (gen / "broken.png").write_bytes(b"\x89PNG not really")
    (gen / "broken.json").write_text(json.dumps({"prompt": "a prompt whose image is broken"}))
    real = tmp_path / "real"
    rows = []
    for i in range(5):
        _write_png(real / f"r{i}.png", rng, 80, 72)
        rows.append({"id": f"img-{i}", "path": str(real / f"r{i}.png"), "source": "test", "width": 72, "height": 80,
                     "crop": [0, 4, 72, 76], "size": 64, "caption": "", "split": "train" if i == 4 else "test"})
    manifest.write_rows(real / "manifest.parquet", rows, manifest.IMAGE_COLUMNS)
    for i in range(3):
        write_mp4(gen / f"video_{i}.mp4", rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), fps=5)
        write_mp4(real / "videos" / f"v{i}.mp4", rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), fps=5)
    section = {"reference": str(real / "manifest.parquet"), "reference_videos": str(real / "videos"),
               "block_size": 32, "block_stride": 32, "inception_size": SMALL, "is_splits": 2, "fid_method": "eigen",
               "fvd_frames": 4, "fvd_size": 32, "batch_size": 8, "device": "cpu",
               "i3d_weights": str(weights_dir / "rgb_imagenet.pt")}
    if with_inception:
        section["inception_weights"] = str(weights_dir / "pt_inception-fid.pth")
    if clip_dir is not None:
        section["clip_model"] = str(clip_dir)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"run_dir": "run", "evaluate": section}))
    return config


def test_evaluate_stage_values_skips_and_reference_cache(tmp_path, weights_dir, monkeypatch):
    from pipeline.atomic import sha256_file
    from pipeline.evaluation import evaluate as ev

    config = _make_run(tmp_path, weights_dir)
    calls, distances = [], []
    real_stats = extract.inception_block_stats

    def counting(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return real_stats(*args, **kwargs)

    def recording(*args, **kwargs):
        value = frechet_distance(*args, **kwargs)
        distances.append((args, kwargs, value))
        return value

    monkeypatch.setattr(extract, "inception_block_stats", counting)
    monkeypatch.setattr(ev, "frechet_distance", recording)
    assert ev.main(["--config", str(config)]) == 0
    out = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())

    assert set(out["metrics"]) == {"block_fid", "inception_score", "fvd"}
    assert out["skipped"]["clip_sim"] == "no CLIP model configured: set evaluate.clip_model"
    assert out["skipped"]["bits_per_token"].startswith("no trained renderer export at ")  # no stage 60 here
    assert set(out["skipped"]) == {"clip_sim", "bits_per_token"}
    assert [b["path"].endswith("broken.png") for b in out["bad_inputs"]] == [True]
    sha_inception = out["weights"]["inception"]["sha256"]
    assert sha_inception == sha256_file(weights_dir / "pt_inception-fid.pth")
    assert out["weights"]["i3d"]["sha256"] == sha256_file(weights_dir / "rgb_imagenet.pt")

    fid = out["metrics"]["block_fid"]
    # 3 readable 64x96 images -> 2x3 blocks each; 4 test-split 64x64 crops -> 2x2 blocks each
    assert (fid["generated_images"], fid["generated_blocks"]) == (3, 18)
    assert (fid["reference_images"], fid["reference_blocks"]) == (4, 16)
    assert fid["reference_cache_reused"] is False and Path(fid["reference_cache"]).is_file()
    assert fid["weights_sha256"] == sha_inception

    # the statistics handed to the Fréchet distance are those of every block through the network
    # (pipeline/evaluation/metrics/fid.py itself is checked against SciPy in test_metrics_math.py)
    model = load_inception(weights_dir / "pt_inception-fid.pth", input_size=SMALL)
    gen_imgs = [np.asarray(Image.open(tmp_path / "run" / "samples" / f"sample_{i}.png")) for i in range(3)]
    rows = [r for r in manifest.read_rows(tmp_path / "real" / "manifest.parquet") if r["split"] == "test"]
    ref_imgs = [manifest.load_image_crop(r["path"], r["crop"], r["size"]) for r in rows]

    def feats(imgs):
        return model.extract(np.stack([b for im in imgs for b in iter_blocks(im, 32, 32)]))[0]

    (mu_g, cov_g, mu_r, cov_r), kwargs, value = distances[0]
    g, r = feats(gen_imgs), feats(ref_imgs)
    np.testing.assert_allclose(mu_g, g.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cov_g, np.cov(g, rowvar=False), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mu_r, r.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cov_r, np.cov(r, rowvar=False), rtol=1e-4, atol=1e-6)
    assert kwargs == {"method": "eigen"} and fid["value"] == pytest.approx(value, rel=1e-12) and value > 0

    isc = out["metrics"]["inception_score"]
    assert isc["images"] == 3 and isc["splits"] == 2 and 1.0 <= isc["value"] <= 1008
    fvd = out["metrics"]["fvd"]
    assert (fvd["generated_clips"], fvd["reference_clips"]) == (3, 3) and fvd["value"] > 0
    assert calls == ["reference blocks", "generated blocks"]

    # second run: the cached reference statistics are reused, not recomputed, and give the same value;
    # IS now comes from the logits of the blocks that Block-FID embeds anyway (one pass, no re-read)
    raw = yaml.safe_load(config.read_text())
    raw["evaluate"]["is_on"] = "blocks"
    config.write_text(yaml.safe_dump(raw))
    # The distance itself is not computed again (a 2048-d eigendecomposition is the slowest step
    # here): the second run must hand over exactly the statistics of the first.
    first_distances = list(distances)

    def same_as_first(*args, **kwargs):
        before_args, before_kwargs, before_value = first_distances.pop(0)
        assert kwargs == before_kwargs
        for got, want in zip(args, before_args):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        return before_value

    monkeypatch.setattr(ev, "frechet_distance", same_as_first)
    calls.clear()
    assert ev.main(["--config", str(config)]) == 0
    again = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert calls == ["generated blocks"] and first_distances == []
    assert again["metrics"]["inception_score"]["samples"] == 18 and again["metrics"]["inception_score"]["images"] == 3
    assert again["metrics"]["block_fid"]["reference_cache_reused"] is True
    assert again["metrics"]["fvd"]["reference_cache_reused"] is True
    assert again["metrics"]["block_fid"]["value"] == pytest.approx(fid["value"], rel=1e-9)
    assert again["metrics"]["fvd"]["value"] == pytest.approx(fvd["value"], rel=1e-9)


def test_reference_cache_key_decides_reuse(tmp_path):
    from pipeline.evaluation.metrics import reference
    from pipeline.evaluation.metrics.fid import RunningStats

    computed = []

    def compute(seed):
        def run():
            computed.append(seed)
            stats = RunningStats(3)
            stats.update(np.random.default_rng(seed).normal(size=(10, 3)))
            return stats
        return run

    key = reference.make_key("block_fid", [["a.png", 10, 1, None, None]], "sha-1", {"block_size": 256})
    first, reused, path = reference.cached_stats(tmp_path, key, compute(0))
    assert not reused and path.parent == tmp_path and computed == [0]
    second, reused, _ = reference.cached_stats(tmp_path, key, compute(1))
    assert reused and computed == [0]
    np.testing.assert_array_equal(second.cov, first.cov)
    assert second.count == 10
    # other inputs, other weights or other parameters: another key, recomputed
    for changed in (reference.make_key("block_fid", [["a.png", 10, 2, None, None]], "sha-1", {"block_size": 256}),
                    reference.make_key("block_fid", [["a.png", 10, 1, None, None]], "sha-2", {"block_size": 256}),
                    reference.make_key("block_fid", [["a.png", 10, 1, None, None]], "sha-1", {"block_size": 128})):
        assert not reference.cached_stats(tmp_path, changed, compute(2))[1]
    assert computed == [0, 2, 2, 2]
    # a damaged cache file is recomputed, and the rewrite is complete (no temporaries left)
    path.write_bytes(b"garbage")
    assert not reference.cached_stats(tmp_path, key, compute(3))[1]
    assert reference.cached_stats(tmp_path, key, compute(4))[1]
    assert not list(tmp_path.glob(".*.tmp"))


def test_evaluate_without_inception_weights_skips_with_reasons(tmp_path, weights_dir, clip_dir, caplog):
    from pipeline.config import load_config
    from pipeline.evaluation import evaluate as ev

    config = _make_run(tmp_path, weights_dir, clip_dir=clip_dir, with_inception=False)
    raw = yaml.safe_load(config.read_text())
    raw["evaluate"]["metrics"] = ["block_fid", "inception_score", "clip_sim"]
    config.write_text(yaml.safe_dump(raw))
    with caplog.at_level("WARNING"):
        out = ev.evaluate(load_config(config))
    reason = "no Inception weights configured: set evaluate.inception_weights"
    assert out["skipped"] == {"block_fid": reason, "inception_score": reason}
    assert f"block_fid skipped: {reason}" in caplog.text
    clip = out["metrics"]["clip_sim"]
    assert clip["images"] == 2 and clip["images_without_prompt"] == 1 and -1 <= clip["value"] <= 1
    assert set(clip["weights_sha256"]) == {"model.safetensors"}
    assert [b["path"].endswith("broken.png") for b in out["bad_inputs"]] == [True]
    written = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert written["skipped"] == out["skipped"] and written["metrics"]["clip_sim"]["value"] == clip["value"]


def test_evaluate_config_errors_name_the_key(tmp_path, weights_dir):
    from pipeline.config import ConfigError, load_config
    from pipeline.evaluation import evaluate as ev

    config = _make_run(tmp_path, weights_dir)
    raw = yaml.safe_load(config.read_text())
    raw["evaluate"]["inception_weights"] = str(tmp_path / "typo.pth")
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="inception_weights.*typo.pth"):
        ev.evaluate(load_config(config))
    raw["evaluate"].pop("inception_weights")
    raw["evaluate"]["metrics"] = ["block_fid", "bpt"]
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="unknown metric.*bpt"):
        ev.evaluate(load_config(config))
    assert ev.main(["--config", str(config)]) == 1  # pipeline.errors: 1 = an error the user can fix


def test_block_fid_over_a_region_sees_only_that_region(tmp_path, weights_dir, monkeypatch):
    """Table 3's metric: the extended half against the same half of the real images. Samples whose
    extended half equals the real image's and whose given half is noise score ~0; the given half
    never enters the statistics (over the whole image, the noise moves the generated statistics)."""
    from pipeline.config import load_config
    from pipeline.evaluation import evaluate as ev
    from pipeline.evaluation.metrics.media import ImageItem, MediaError, with_region

    rng = np.random.default_rng(11)
    real, gen = tmp_path / "real", tmp_path / "run" / "samples"
    rows = []
    for i in range(6):
        y, x = np.mgrid[0:64, 0:64] / 64.0  # smooth real images: gradients and a little noise
        img = np.stack([y * 200 * (i + 1) / 6, x * 180, (1 - y) * 150], -1) + rng.normal(0, 4, (64, 64, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
        real.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(real / f"r{i}.png")
        rows.append({"id": f"img-{i}", "path": str(real / f"r{i}.png"), "source": "t", "width": 64, "height": 64,
                     "crop": [0, 0, 64, 64], "size": 64, "caption": "", "split": "test"})
        sample = img.copy()
        sample[:, :32] = rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)  # the given (left) half: noise
        gen.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample).save(gen / f"{i}.png")
    manifest.write_rows(real / "manifest.parquet", rows, manifest.IMAGE_COLUMNS)
    section = {"metrics": ["block_fid"], "reference": str(real / "manifest.parquet"), "block_size": 32,
               "block_stride": 16, "inception_size": SMALL, "fid_method": "eigen", "device": "cpu",
               "inception_weights": str(weights_dir / "pt_inception-fid.pth")}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"run_dir": "run", "evaluate": section}))
    run = load_config(config)
    right = [32, 0, 64, 64]
    halves = ev.evaluate(run, ev.EvaluateConfig(**section, generated_region=right, reference_region=right),
                         out=tmp_path / "halves.json")["metrics"]["block_fid"]
    # a 64 x 32 half at block 32, stride 16: 3 x 1 blocks per image
    assert (halves["generated_blocks"], halves["reference_blocks"]) == (18, 18)
    assert halves["generated_region"] == right and halves["reference_region"] == right
    # ~0 up to float64 rounding, relative to the spread of the features (random weights: large features)
    with np.load(halves["reference_cache"]) as cached:
        scale = float(np.trace(cached["cov"]))
    assert abs(halves["value"]) < 1e-6 * scale

    # Over whole images the noisy given half does enter. (Only the means are compared here: one
    # 2048-d Fréchet distance above is what this test can afford on a shared 2-core machine.)
    seen = []
    monkeypatch.setattr(ev, "frechet_distance", lambda m1, s1, m2, s2, method: seen.append((m1, m2)) or 0.0)
    whole = ev.evaluate(run, ev.EvaluateConfig(**section), out=tmp_path / "whole.json")["metrics"]["block_fid"]
    assert whole["generated_blocks"] == 6 * 9 and whole["reference_cache"] != halves["reference_cache"]
    (mu_gen, mu_ref), = seen
    assert np.linalg.norm(mu_gen - mu_ref) > 0.1 * np.linalg.norm(mu_ref)
    # a region outside an image is that image's MediaError (evaluate lists it under bad_inputs)
    (item,) = with_region([ImageItem(gen / "0.png")], [32, 0, 96, 64])
    with pytest.raises(MediaError, match=r"region \[32, 0, 96, 64\] is outside the 64x64 image"):
        item.read()


def test_fvd_leaves_out_clips_shorter_than_its_length(tmp_path, weights_dir):
    from pipeline.evaluation.metrics.i3d import load_i3d
    from pipeline.evaluation.metrics.media import VideoItem
    from pipeline.formats.video_io import write_mp4

    rng = np.random.default_rng(3)
    items = []
    for i, frames in enumerate((8, 8, 5, 8)):
        write_mp4(tmp_path / f"v{i}.mp4", rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8), fps=5)
        items.append(VideoItem(tmp_path / f"v{i}.mp4"))
    bad = []
    stats = extract.i3d_stats(load_i3d(weights_dir / "rgb_imagenet.pt"), items, 8, 32, 2, "cpu", bad)
    assert stats.count == 3
    assert bad == [{"path": str(tmp_path / "v2.mp4"), "reason": "5 frames, FVD here needs 8"}]
