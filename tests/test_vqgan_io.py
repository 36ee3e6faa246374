"""VQGAN weights: taming's Lightning layout, safe unpickling, strict keys, safetensors export, LPIPS files."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from model.vqgan import VQGAN, preset
from pipeline import atomic
from pipeline.config import ConfigError, load_config
from pipeline.formats import vqgan_io
from pipeline.tokens.vqgan_losses import LPIPS, VGG16_LAYOUT, WeightsError


class NotATensor:
    """Pickled by value: loading it needs full unpickling."""

    def __init__(self, v):
        self.v = v


def tiny_model(seed: int = 0) -> VQGAN:
    torch.manual_seed(seed)
    model = VQGAN(preset("tiny_f16"))
    with torch.no_grad():  # taming initialises the codebook tiny; spread it so that codes differ
        model.quantize.embedding.weight.normal_()
    return model.eval()


def lightning_ckpt(model: VQGAN, extra: dict | None = None) -> dict:
    sd = dict(model.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    sd["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    return {"state_dict": sd, "global_step": 1234, "epoch": 3, "optimizer_states": [], **(extra or {})}


def write_config(tmp_path: Path, vqgan: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "run", "seed": 0, "vqgan": vqgan}))
    return path


def test_taming_lightning_checkpoint_loads_and_round_trips(tmp_path):
    model = tiny_model()
    torch.save(lightning_ckpt(model), tmp_path / "last.ckpt")
    cfg = load_config(write_config(tmp_path, {"preset": "tiny_f16", "weights": "last.ckpt"}))
    loaded, sha, path = vqgan_io.load_vqgan(cfg)
    assert path == tmp_path / "last.ckpt" and sha == atomic.sha256_file(path)
    assert set(loaded.state_dict()) == set(model.state_dict())
    torch.manual_seed(5)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        codes = model.encode(x)
        assert len(codes.unique()) > 1
        assert torch.equal(loaded.encode(x), codes)
        assert torch.equal(loaded.decode_codes(codes), model.decode_codes(codes))


def test_lightning_bookkeeping_objects_do_not_need_full_pickle(tmp_path, monkeypatch):
    # Lightning stores e.g. its ModelCheckpoint class as a key under "callbacks"; make such a file.
    names = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": names[-1]})
    sys.modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    model = tiny_model(1)
    torch.save(lightning_ckpt(model, {"callbacks": {ModelCheckpoint: {"best_model_score": 0.5}}}),
               tmp_path / "last.ckpt")
    for name in names:  # the loader must not need the framework (it is not installed)
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(pickle.UnpicklingError):  # a plain weights-only load fails on such a file
        torch.load(tmp_path / "last.ckpt", weights_only=True)
    sd = vqgan_io.read_state_dict(tmp_path / "last.ckpt")
    assert not any(k.startswith("loss.") for k in sd)
    assert torch.equal(sd["quantize.embedding.weight"], model.quantize.embedding.weight)


def test_pickle_needing_full_unpickling_is_refused_with_the_option_named(tmp_path):
    model = tiny_model(2)
    torch.save(lightning_ckpt(model, {"hyper_parameters": NotATensor(3)}), tmp_path / "odd.ckpt")
    cfg = load_config(write_config(tmp_path, {"preset": "tiny_f16", "weights": "odd.ckpt"}))
    with pytest.raises(vqgan_io.VQGANLoadError) as err:
        vqgan_io.load_vqgan(cfg)
    assert "vqgan.allow_unsafe_pickle: true" in str(err.value) and "odd.ckpt" in str(err.value)
    assert "NotATensor" in str(err.value)
    cfg = load_config(write_config(tmp_path, {"preset": "tiny_f16", "weights": "odd.ckpt",
                                              "allow_unsafe_pickle": True}))
    loaded, _, _ = vqgan_io.load_vqgan(cfg)
    assert torch.equal(loaded.quantize.embedding.weight, model.quantize.embedding.weight)


def test_strict_keys_name_missing_unexpected_and_wrong_shapes(tmp_path):
    sd = dict(tiny_model(3).state_dict())
    sd.pop("decoder.conv_out.bias")
    sd["encoder.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "plain.pth")
    with pytest.raises(vqgan_io.VQGANLoadError) as err:
        vqgan_io.load_weights(VQGAN(preset("tiny_f16")), tmp_path / "plain.pth")
    msg = str(err.value)
    assert "plain.pth" in msg and "decoder.conv_out.bias" in msg and "encoder.extra.weight" in msg
    # An f8 file into an f16 model: the names overlap, the shapes do not.
    vqgan_io.save_vqgan(VQGAN(preset("tiny_f8")), tmp_path / "f8.safetensors")
    with pytest.raises(vqgan_io.VQGANLoadError, match="shape mismatches [1-9]"):
        vqgan_io.load_weights(VQGAN(preset("tiny_f16")), tmp_path / "f8.safetensors")
    # Same shapes, other arithmetic: only the export's JSON can tell (GroupNorm groups here).
    vqgan_io.save_vqgan(VQGAN(preset("tiny_f16", norm_groups=32)), tmp_path / "g32.safetensors")
    with pytest.raises(vqgan_io.VQGANLoadError, match="norm_groups.*32, 8"):
        vqgan_io.load_weights(VQGAN(preset("tiny_f16")), tmp_path / "g32.safetensors")


def test_plain_state_dict_and_safetensors_export_round_trip(tmp_path):
    model = tiny_model(4)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    other = VQGAN(preset("tiny_f16"))
    vqgan_io.load_weights(other, tmp_path / "plain.pt")
    sha = vqgan_io.save_vqgan(other, tmp_path / "out" / "vqgan.safetensors", extra={"steps": 7})
    side = json.loads((tmp_path / "out" / "vqgan.json").read_text())
    assert side["config"] == preset("tiny_f16").to_dict() and side["sha256"] == sha and side["steps"] == 7
    # With `weights: null` consumers pick up stage 40's export under run_dir.
    run = tmp_path / "run" / "vqgan"
    run.mkdir(parents=True)
    (tmp_path / "out" / "vqgan.safetensors").rename(run / "vqgan.safetensors")
    cfg = load_config(write_config(tmp_path, {"preset": "tiny_f16"}))
    loaded, sha2, path = vqgan_io.load_vqgan(cfg)
    assert sha2 == sha and path == run / "vqgan.safetensors"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_missing_weights_and_bad_sections_are_clear(tmp_path):
    cfg = load_config(write_config(tmp_path, {"preset": "tiny_f16"}))
    with pytest.raises(ConfigError, match="run stage 40"):
        vqgan_io.load_vqgan(cfg)
    cfg = load_config(write_config(tmp_path, {"preset": "tiny_f16", "overrides": {"ch": 36}}))
    with pytest.raises(ConfigError, match="multiple of norm_groups"):
        vqgan_io.architecture(cfg)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(vqgan_io.VQGANLoadError, match="junk.ckpt: truncated or not a torch checkpoint"):
        vqgan_io.read_state_dict(tmp_path / "junk.ckpt")
    torch.save(tiny_model().state_dict(), tmp_path / "cut.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:5000])  # truncated download
    with pytest.raises(vqgan_io.VQGANLoadError, match="cut.pt: truncated or not a torch checkpoint"):
        vqgan_io.read_state_dict(tmp_path / "cut.pt")


def test_lpips_loads_torchvision_vgg16_and_lpips_linear_files(tmp_path):
    torch.manual_seed(6)
    vgg, i, width = {}, 0, 3
    for item in VGG16_LAYOUT:  # torchvision's `features.N` numbering (conv, relu, ..., pool)
        if item == "M":
            i += 1
            continue
        vgg[f"features.{i}.weight"] = torch.randn(item, width, 3, 3) * (2.0 / (9 * width)) ** 0.5
        vgg[f"features.{i}.bias"] = torch.zeros(item)
        width, i = item, i + 2
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # present in the real file, ignored
    torch.save(vgg, tmp_path / "vgg16.pth")
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lin, tmp_path / "vgg.pth")
    net = LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "vgg.pth")
    assert torch.equal(net.features[28].weight, vgg["features.28.weight"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    d_same, d_diff = net(x, x), net(x, y)
    assert d_same.shape == (2,) and torch.allclose(d_same, torch.zeros(2))
    assert (d_diff > 0).all()
    del lin["lin3.model.1.weight"]
    torch.save(lin, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="lin3.model.1.weight"):
        LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "bad.pth")
