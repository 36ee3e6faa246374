"""Reading a metric network's weight file (Inception, I3D): one safe path for all of them.

`torch.load(..., weights_only=True)` only (no code runs from the file); the usual wrappers are
taken off: a Lightning-style `{"state_dict": ...}` and the `module.` prefix of nn.DataParallel.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def read_state_dict(path: str | os.PathLike, what: str) -> dict:
    """The tensors of `path` as a plain state dict; errors name the file and `what` it should be."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a loadable PyTorch weights file ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a {what} state dict (a {type(state).__name__})")
    return state
