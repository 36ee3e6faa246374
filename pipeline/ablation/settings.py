"""The `ablate` section of a run config: where the ablations write, what they train on, and the shared budget.

    ablate:
      run_dir: ../runs/ablations          # default: the config's run_dir/ablations
      data: ../runs/demo/tokens/images/train          # default: train.data, else run_dir/tokens/images/train
      validation_data: ../runs/demo/tokens/images/test  # default: run_dir/tokens/images/test
      validation_direction: down-right-forward
      train: {epochs: 8, nproc_per_node: 1}   # laid over the train section for every variant: the budget
      model: {}                             # laid over the model section for every variant
      convergence_tolerance: 0.01           # see pipeline.ablation.report
      large: {}                             # the size ablation's larger model (default 1.5x depth, 5/3 width)
      expansions: [0, 1, 2, 3]              # e_h = e_w values of Fig. 7b
      render_sizes: [2, 4, 8]               # patch sides (h_p = w_p, in codes) of Fig. 7a
      speed: {codes: null, batch: 1, repeats: 3}   # codes null: the token set's own image size
      cpu_threads: null                     # OMP_NUM_THREADS of every subprocess (null: the environment's)
      extra_seeds: 2                        # the `seed` ablation: the default again with seed+1, seed+2

Every variant of every ablation trains from the same token set, seed and budget; only its own
switches differ from the model and train sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.directions import Direction
from pipeline.config import ConfigError, RunConfig


@dataclass
class SpeedSettings:
    codes: tuple[int, int] | None = None  # image size in VQGAN codes; None: the token set's
    batch: int = 1
    repeats: int = 3

    def __post_init__(self):
        if self.batch < 1 or self.repeats < 1:
            raise ValueError("speed.batch and speed.repeats must be >= 1")
        if self.codes is not None and min(self.codes) < 1:
            raise ValueError(f"speed.codes must be two sizes >= 1, got {self.codes}")


@dataclass
class AblateSection:
    run_dir: str | None = None
    data: str | None = None
    validation_data: str | None = None
    validation_direction: str = "down-right-forward"
    validation_batch_size: int = 16
    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    convergence_tolerance: float = 0.01
    large: dict[str, Any] = field(default_factory=dict)
    expansions: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    render_sizes: list[int] = field(default_factory=lambda: [2, 4, 8])
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    extra_seeds: int = 2  # the `seed` ablation: the default again with seeds seed+1 .. seed+extra_seeds
    # CPU threads of every subprocess (OMP_NUM_THREADS); None leaves the environment's. Small models on a
    # shared CPU run much faster on one thread per process than on several.
    cpu_threads: int | None = None

    def __post_init__(self):
        problems = []
        try:
            Direction.parse(self.validation_direction)
        except ValueError as e:
            problems.append(f"validation_direction: {e}")
        if self.validation_batch_size < 1:
            problems.append("validation_batch_size must be >= 1")
        if not 0 < self.convergence_tolerance < 1:
            problems.append("convergence_tolerance must be in (0, 1)")
        if self.extra_seeds < 1:
            problems.append("extra_seeds must be >= 1")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            problems.append("cpu_threads must be >= 1")
        if not self.expansions or min(self.expansions) < 0:
            problems.append("expansions must list sizes >= 0")
        if not self.render_sizes or min(self.render_sizes) < 1:
            problems.append("render_sizes must list sizes >= 1")
        for key in ("run_dir", "data", "checkpoint_dir", "tensorboard_dir", "save_every", "keep_last", "export"):
            if key in self.train:
                problems.append(f"train.{key} is set by the harness for each variant; remove it here")
        if problems:
            raise ValueError("; ".join(problems))


def read_section(cfg: RunConfig) -> AblateSection:
    return cfg.section("ablate", AblateSection)


def ablations_dir(cfg: RunConfig, sec: AblateSection) -> Path:
    return cfg.resolve(sec.run_dir) if sec.run_dir else cfg.run_dir / "ablations"


def train_data(cfg: RunConfig, sec: AblateSection) -> Path:
    if sec.data:
        return cfg.resolve(sec.data)
    train = cfg.raw.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{cfg.path}: section 'train' must be a mapping")
    return cfg.resolve(train["data"]) if train.get("data") else cfg.run_dir / "tokens" / "images" / "train"


def validation_data(cfg: RunConfig, sec: AblateSection) -> Path:
    return cfg.resolve(sec.validation_data) if sec.validation_data else cfg.run_dir / "tokens" / "images" / "test"
