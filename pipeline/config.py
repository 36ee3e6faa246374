"""Run configuration: one YAML file per run, one section per stage.

Every stage reads the same file and takes its own section, validated into a dataclass that the
stage module defines. Unknown keys are errors (a typo must never silently fall back to a
default), and every error names the file and the key. The same holds one level up: a top-level
key that is not in `SECTIONS` (a misspelt `trian:`, say) is an error when the file is loaded.

Numbers: the file is read as YAML 1.2 reads numbers, so `lr: 1e-3` is the float 0.001 (PyYAML's
YAML 1.1 rules would make it the string '1e-3', because 1.1 wants a dot in a float).

Top-level keys shared by all stages:
  run_dir:  where every stage writes (relative paths are taken from the config file's folder)
  seed:     the base seed every stage derives its own generators from
  profiles: named overlays, e.g. `profiles: {video: {run_dir: ..., model: {...}, train: {...}}}`;
            `load_config(path, profile="video")` deep-merges one over the rest, so a second model
            (the demo's video renderer) is trained from the same file with its own outputs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.errors import PipelineError

T = TypeVar("T")

# Every top-level key a run config may have: the shared keys, then one section per stage (in stage
# order). A section added for a new stage goes here too; anything else in a file is an error.
SECTIONS = (
    "run_dir", "seed", "profiles",
    "demo_data",  # 00
    "ingest_images", "single_image", "ingest_videos", "filter", "caption",  # 10-30 (12: one large image)
    "vqgan", "train_vqgan", "tokenize",  # 40-50 (`vqgan` is also read by 60's previews and 70)
    "model", "train",  # 60-65
    "sample",  # 70
    "evaluate",  # 80
    "protocol",  # 85: the paper's Tables 1-3
    "single_image_run",  # 95: a single-image config to run after this one
    "ablate",  # ./run.sh ablate: the paper's ablations (pipeline.ablation)
)


class ConfigError(PipelineError, ValueError):
    """A configuration problem; the message names the file and the key."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: `1e-3` and `5E+2` are numbers, not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+
                  |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str):
    """Parse YAML text the way run configs are read (safe, YAML 1.2 floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


@dataclasses.dataclass
class RunConfig:
    path: Path  # the YAML file
    raw: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return self.resolve(self.raw.get("run_dir", "runs/default"))

    @property
    def seed(self) -> int:
        return int(self.raw.get("seed", 0))

    def resolve(self, p: str | os.PathLike) -> Path:
        """A path from the config: absolute as is, relative to the config file's folder."""
        p = Path(os.path.expanduser(str(p)))
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def has(self, name: str) -> bool:
        return isinstance(self.raw.get(name), dict)

    def section(self, name: str, cls: type[T], required: bool = False) -> T:
        """The section `name` as dataclass `cls` (defaults where the file says nothing)."""
        data = self.raw.get(name)
        if data is None:
            if required:
                raise ConfigError(f"{self.path}: section '{name}' is required and missing")
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}: section '{name}' must be a mapping, got {type(data).__name__}")
        return from_dict(cls, data, where=f"{self.path}: {name}")


def load_config(path: str | os.PathLike, profile: str | None = None) -> RunConfig:
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    check_sections(raw, str(path))
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: 'profiles' must be a mapping of name -> overlay")
    for name, overlay in profiles.items():
        if isinstance(overlay, dict):
            check_sections(overlay, f"{path}: profiles.{name}")
    if profile is not None:
        if profile not in profiles or not isinstance(profiles[profile], dict):
            raise ConfigError(f"{path}: no profile {profile!r} (profiles: {sorted(profiles)})")
        raw = deep_merge(raw, profiles[profile])
    return RunConfig(path=path, raw=raw)


def check_sections(raw: dict, where: str) -> None:
    """Refuse top-level keys that no stage reads (a misspelt section would otherwise be ignored)."""
    unknown = sorted(str(k) for k in raw if k not in SECTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; known: {sorted(SECTIONS)}")


def deep_merge(base: dict, overlay: dict) -> dict:
    """`overlay` over `base`: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in overlay.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from `data`, converting nested dataclasses, tuples and paths.

    Raises ConfigError naming `where` and the key for unknown keys and wrong types.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    return obj


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be None")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(args[0], v, where) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML/JSON-able data (tuples to lists, paths to strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
