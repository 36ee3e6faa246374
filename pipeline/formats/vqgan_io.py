"""VQGAN weights in and out: the `vqgan` config section, safe loading of the public formats, export.

Config section `vqgan` (shared by stages 40 train, 50 tokenize, 70 sample, 80 evaluate):

    vqgan:
      preset: f16_16384          # model.vqgan.PRESETS: f16_16384 (taming's), tiny_f8, tiny_f16
      overrides: {}              # any VQGANConfig field, e.g. {n_embed: 1024}
      weights: null              # .ckpt (taming / Lightning), .pt/.pth state dict, or .safetensors
      allow_unsafe_pickle: false

`weights: null` means "the weights stage 40 trained": run_dir/vqgan/vqgan.safetensors. For stage 40
itself it means "start from random weights"; a path there means "fine-tune these", and once stage 40 has
exported the fine-tuned weights (its vqgan.json records `fine_tuned_from` this path), the later stages
load that export rather than the starting point.

Loading never runs code from the file. Pickle formats go through `torch.load(weights_only=True)`.
Lightning checkpoints (taming's public `last.ckpt`) also pickle bookkeeping objects of the training
framework (e.g. `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` as a dictionary key
under `callbacks`); those names are listed statically first, and the ones under the Lightning packages
are given inert stand-in classes for the load (they can only ever become empty objects, and we read
nothing but `state_dict`). Any other non-tensor global makes us refuse, with a message naming the
option `vqgan.allow_unsafe_pickle: true` that switches to full unpickling for files the user trusts.

Key checking is strict: the file must hold exactly the model's tensors (taming's `loss.*` entries,
the LPIPS and discriminator weights of their training loss, are dropped first), with the same shapes.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from model.vqgan import VQGAN, VQGANConfig, preset
from pipeline import atomic
from pipeline.config import ConfigError, RunConfig
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

EXPORT_NAME = "vqgan.safetensors"
UNSAFE_OPTION = "vqgan.allow_unsafe_pickle: true"
# Packages whose pickled objects are training bookkeeping in Lightning checkpoints, never weights.
LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning", "lightning_fabric")


class VQGANLoadError(PipelineError, RuntimeError):
    """A weights file that cannot be used; the message names the file and the problem."""


@dataclass
class VQGANSection:
    preset: str = "f16_16384"
    overrides: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    allow_unsafe_pickle: bool = False
    # "taming": every operation as taming-transformers computes it, so codes match theirs on the same
    # weights; "fast": fused attention and SiLU (no [hw, hw] attention matrix; see model/vqgan.py).
    arithmetic: Literal["taming", "fast"] = "taming"


def read_section(cfg: RunConfig) -> VQGANSection:
    return cfg.section("vqgan", VQGANSection)


def architecture(cfg: RunConfig, section: VQGANSection | None = None) -> VQGANConfig:
    section = section or read_section(cfg)
    try:
        return preset(section.preset, **section.overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cfg.path}: vqgan: {e}") from e


def export_path(cfg: RunConfig) -> Path:
    return cfg.run_dir / "vqgan" / EXPORT_NAME


def weights_path(cfg: RunConfig, section: VQGANSection | None = None, required: bool = True) -> Path | None:
    """The weights file to load: `vqgan.weights`, else stage 40's export (when it exists)."""
    section = section or read_section(cfg)
    if section.weights:
        path = cfg.resolve(section.weights)
        if not path.is_file():
            raise ConfigError(f"{cfg.path}: vqgan.weights: file not found: {path}")
        tuned = export_path(cfg)
        if tuned.is_file() and tuned.with_suffix(".json").is_file():  # stage 40 fine-tuned `path` in this run
            info = atomic.read_json(tuned.with_suffix(".json"))
            if isinstance(info, dict) and (info.get("fine_tuned_from") or {}).get("path") == str(path):
                return tuned
        return path
    path = export_path(cfg)
    if path.is_file():
        return path
    if required:
        raise ConfigError(f"{cfg.path}: no VQGAN weights: set vqgan.weights (taming .ckpt, .pt/.pth or "
                          f".safetensors) or run stage 40 (train VQGAN) to make {path}")
    return None


# ----------------------------------------------------------------------------- reading


def _inert_class(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")

    class Inert:
        """Stand-in for a pickled framework object: accepts any state, keeps none of it."""

        def __init__(self, *args, **kwargs):
            pass

        def __setstate__(self, state):
            pass

    Inert.__module__, Inert.__name__, Inert.__qualname__ = module, name, name
    return Inert


def _unpickler_reason(error: Exception) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):  # torch puts the actual cause after this marker
        if ln.startswith("WeightsUnpickler error"):
            return " ".join(lines[i:i + 2])
    return lines[0] if lines else type(error).__name__


def _torch_load(path: Path, allow_unsafe_pickle: bool) -> Any:
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and head[:1] != b"\x80":  # neither torch's zip format nor a (legacy) pickle
        raise VQGANLoadError(f"{path}: truncated or not a torch checkpoint (neither a complete torch.save zip "
                             "archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first_error:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path) if is_zip else None
        if needed and all(n.split(".", 1)[0] in LIGHTNING_PACKAGES for n in needed):
            stand_ins = [(_inert_class(n), n) for n in needed]
            try:
                with torch.serialization.safe_globals(stand_ins):
                    obj = torch.load(path, map_location="cpu", weights_only=True)
                log.info("%s: Lightning bookkeeping objects %s read as inert stand-in classes", path, needed)
                return obj
            except pickle.UnpicklingError:
                pass  # fall through to the refusal (or the trusted full load)
        if allow_unsafe_pickle:
            log.warning("%s: loading with full pickle (%s is set); this runs code from the file",
                        path, UNSAFE_OPTION)
            return torch.load(path, map_location="cpu", weights_only=False)
        what = f"it references {needed}" if needed else _unpickler_reason(first_error)
        raise VQGANLoadError(
            f"{path}: refusing to unpickle: the file needs more than tensors ({what}). Full unpickling can "
            f"run arbitrary code; if you trust this file set `{UNSAFE_OPTION}` in the config "
            f"(or convert it to .safetensors)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise VQGANLoadError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e


def read_state_dict(path: str | Path, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The model tensors of a weights file, `loss.*` entries dropped."""
    path = Path(path)
    if not path.is_file():
        raise VQGANLoadError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise VQGANLoadError(f"{path}: not a readable safetensors file ({e})") from e
    else:
        obj = _torch_load(path, allow_unsafe_pickle)
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            sd = obj["state_dict"]  # Lightning .ckpt (taming) or {"state_dict": ...}
        elif isinstance(obj, dict):
            sd = obj
        else:
            raise VQGANLoadError(f"{path}: expected a state dict or a Lightning checkpoint, "
                                 f"found {type(obj).__name__}")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise VQGANLoadError(f"{path}: entries that are not tensors: {sorted(map(str, bad))[:10]}")
    return {k: v for k, v in sd.items() if not k.startswith("loss.")}


def load_weights(model: VQGAN, path: str | Path, allow_unsafe_pickle: bool = False) -> None:
    """Strictly load a weights file into `model` (names and shapes must match exactly)."""
    path = Path(path)
    sd = read_state_dict(path, allow_unsafe_pickle)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(f"{k} file {tuple(sd[k].shape)} model {tuple(own[k].shape)}"
                   for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        def few(xs):
            return f"{len(xs)} {xs[:8]}{' ...' if len(xs) > 8 else ''}"

        hint = _sibling_config_hint(path, model.config)
        raise VQGANLoadError(f"{path}: does not match the configured VQGAN architecture: missing keys "
                             f"{few(missing)}; unexpected keys {few(unexpected)}; shape mismatches {few(wrong)}"
                             f"{hint}")
    _check_export_config(path, model.config)
    model.load_state_dict(sd, strict=True)


def _check_export_config(path: Path, cfg: VQGANConfig) -> None:
    """Our exports carry their architecture in a JSON beside them; refuse a mismatch that the shapes
    cannot reveal (e.g. the GroupNorm group count)."""
    side = path.with_suffix(".json")
    if not side.is_file():
        return
    try:
        info = atomic.read_json(side)
    except ValueError:
        return
    if not isinstance(info, dict) or info.get("weights") != path.name or not isinstance(info.get("config"), dict):
        return  # not our export's companion file
    try:
        theirs = VQGANConfig.from_dict(info["config"])
    except (TypeError, ValueError) as e:
        raise VQGANLoadError(f"{side}: unreadable VQGAN architecture ({e})") from e
    if theirs != cfg:
        diff = {k: (v, cfg.to_dict()[k]) for k, v in theirs.to_dict().items() if cfg.to_dict()[k] != v}
        raise VQGANLoadError(f"{path}: made for another VQGAN architecture than the config's (file, config): "
                             f"{diff} (from {side}); fix vqgan.preset / vqgan.overrides")


def _sibling_config_hint(path: Path, cfg: VQGANConfig) -> str:
    side = path.with_suffix(".json")
    if not side.is_file():
        return " (check vqgan.preset / vqgan.overrides)"
    try:
        theirs = atomic.read_json(side).get("config")
    except (ValueError, AttributeError):
        return ""
    return f" ({side} says the file was made with {theirs}; the config asks for {cfg.to_dict()})"


def load_vqgan(cfg: RunConfig, device: str | torch.device = "cpu") -> tuple[VQGAN, str, Path]:
    """The configured VQGAN with its weights, in eval mode: (model, sha256 of the file, path)."""
    section = read_section(cfg)
    arch = architecture(cfg, section)
    path = weights_path(cfg, section, required=True)
    model = VQGAN(arch).set_arithmetic(section.arithmetic)
    load_weights(model, path, section.allow_unsafe_pickle)
    sha = atomic.sha256_file(path)
    log.info("VQGAN %s (f%d, %d codes) from %s (sha256 %s)", section.preset, arch.downsample, arch.n_embed,
             path, sha[:12])
    return model.to(device).eval(), sha, path


# ----------------------------------------------------------------------------- writing


def save_vqgan(model: VQGAN, path: str | Path, extra: dict | None = None) -> str:
    """Write weights as safetensors and the architecture beside it as JSON (same stem); returns sha256.

    The JSON is written after the weights, so its presence vouches for a complete pair.
    """
    from safetensors.torch import save_file

    path = Path(path)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "taming-vqgan", "config": json.dumps(model.config.to_dict())}
    with atomic.atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=meta)
    sha = atomic.sha256_file(path)
    atomic.write_json(path.with_suffix(".json"), {"config": model.config.to_dict(), "sha256": sha,
                                                  "weights": path.name, **(extra or {})})
    return sha
