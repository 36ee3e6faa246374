"""What every timing bench needs: wait for the device before reading the clock."""

from __future__ import annotations

import torch


def sync(device: torch.device) -> None:
    """Block until `device` has finished its queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
