"""The rendering model's configuration from a run config, and loading an exported renderer.

Config section `model`: a preset name plus any RenderConfig field as an override:

    model:
      preset: base          # model.config.PRESETS: tiny, base, large
      expand: [2, 2, 0]     # any RenderConfig field
      renderer: ar

An export folder (run_dir/train/export/, written by pipeline.training.export) holds:

    renderer.safetensors    fp32 weights (one file, every tensor stored once; tied weights under each name)
    renderer.json           {"config": RenderConfig fields, "sha256": of the weights, provenance}
    text_tokenizer.json     the caption tokenizer (absent for a model without text)

`load_renderer(export_dir)` rebuilds the Renderer from renderer.json, loads the weights strictly
(every tensor present, no extra ones, same shapes) and returns it in eval mode with its tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.config import RenderConfig, preset
from model.renderer import Renderer
from pipeline import atomic
from pipeline.config import ConfigError, RunConfig
from pipeline.errors import PipelineError
from pipeline.formats.text_tokenizer import TextTokenizer

WEIGHTS = "renderer.safetensors"
CONFIG = "renderer.json"
TOKENIZER = "text_tokenizer.json"


class RendererLoadError(PipelineError, RuntimeError):
    """An export folder that cannot be loaded; the message names the file and the problem."""


def model_config(cfg: RunConfig) -> RenderConfig:
    """RenderConfig of the run: section `model` = {preset: NAME, FIELD: value, ...} (default preset base)."""
    raw = cfg.raw.get("model") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg.path}: section 'model' must be a mapping")
    raw = dict(raw)
    name = raw.pop("preset", "base")
    try:
        return preset(str(name), **raw)
    except TypeError as e:  # an unknown field
        known = sorted(RenderConfig.__dataclass_fields__)
        raise ConfigError(f"{cfg.path}: model: {e}; known keys: preset, {', '.join(known)}") from e
    except ValueError as e:
        raise ConfigError(f"{cfg.path}: model: {e}") from e


def export_dir(cfg: RunConfig) -> Path:
    return cfg.run_dir / "train" / "export"


def read_config(folder: str | Path) -> RenderConfig:
    path = Path(folder) / CONFIG
    try:
        data = atomic.read_json(path)
    except FileNotFoundError:
        raise RendererLoadError(f"{path}: missing (not an export folder, or training has not exported)") from None
    except ValueError as e:
        raise RendererLoadError(str(e)) from e
    try:
        return RenderConfig.from_dict(data["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise RendererLoadError(f"{path}: malformed renderer config ({e})") from e


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise RendererLoadError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RendererLoadError(f"{path}: not a readable safetensors file ({e})") from e


def load_weights(model: Renderer, path: str | Path) -> None:
    state = load_state(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or wrong:
        raise RendererLoadError(f"{path}: does not match the model of renderer.json: missing {missing[:5]}, "
                                f"unexpected {extra[:5]}, wrong shape {wrong[:5]}")
    model.load_state_dict(state, strict=True)


def load_renderer(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Renderer, TextTokenizer | None]:
    """(Renderer in eval mode on `device`, its text tokenizer or None) from an export folder."""
    folder = Path(folder)
    cfg = read_config(folder).replace(checkpoint_blocks=False)
    model = Renderer(cfg)
    load_weights(model, folder / WEIGHTS)
    tokenizer = None
    if cfg.has_text:
        tok_path = folder / TOKENIZER
        if not tok_path.is_file():
            raise RendererLoadError(f"{tok_path}: missing, but the model has a text encoder "
                                    f"(text_vocab_size {cfg.text_vocab_size})")
        tokenizer = TextTokenizer.load(tok_path)
        tokenizer.check_fits(cfg.text_vocab_size, f"{tok_path}: ")
    return model.to(device).eval(), tokenizer
