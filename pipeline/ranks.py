"""Which slice of the work this process owns, from the launcher's environment.

`torchrun` and `deepspeed` set RANK / WORLD_SIZE / LOCAL_RANK; a plain `python -m ...` has none
of them and is rank 0 of 1. Curation and tokenisation stages do not need a process group: each
rank takes every WORLD_SIZE-th unit of work and writes its own outputs, and a final merge
(run by rank 0 after all ranks' done-markers exist, or as a separate step) joins them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Round-robin ownership of unit `index` (stable for a given world size)."""
        return index % self.world_size == self.rank


def rank_info() -> RankInfo:
    def env_int(name: str, default: int) -> int:
        v = os.environ.get(name)
        if v is None or v == "":
            return default
        try:
            return int(v)
        except ValueError:
            raise ValueError(f"environment variable {name}={v!r} is not an integer") from None

    rank = env_int("RANK", 0)
    world = env_int("WORLD_SIZE", 1)
    local = env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent launcher environment: RANK={rank} WORLD_SIZE={world}")
    return RankInfo(rank=rank, world_size=world, local_rank=local)


def pick_device(spec: str, local_rank: int = 0, key: str = "device"):
    """The torch device a stage's `device` setting names, for the process of `local_rank`.

    "auto": this rank's GPU (LOCAL_RANK modulo the GPUs) when CUDA is available, else the CPU. A plain
    "cuda" is also this rank's GPU; "cuda:N" and "cpu" are taken as given. A CUDA device without CUDA is a
    ConfigError naming the setting (`key`, e.g. "sample.device")."""
    import torch

    from pipeline.config import ConfigError

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"{key} is {spec!r} but no CUDA device is available")
    return device if device.index is not None else torch.device("cuda", local_rank % torch.cuda.device_count())
