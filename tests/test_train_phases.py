"""The patch loop's phase clock and its one-read conversion of device scalars (pipeline.training)."""

import time

import torch

from pipeline.training.loop import _floats
from pipeline.training.monitor import PhaseClock


def test_phase_clock_charges_each_phase_its_own_time():
    clock = PhaseClock(torch.device("cpu"))
    t0 = time.perf_counter()
    clock.start()
    for _ in range(2):
        time.sleep(0.06)  # far apart: late wake-ups on a loaded machine must not swap them
        clock.mark("forward")
        time.sleep(0.01)
        clock.mark("step")
    elapsed = time.perf_counter() - t0
    assert set(clock.phases) == {"forward", "step"}
    assert clock.phases["forward"] >= 0.12 and clock.phases["step"] >= 0.02
    assert clock.phases["forward"] > clock.phases["step"]
    assert sum(clock.phases.values()) <= elapsed


def test_floats_reads_device_scalars_once_and_keeps_none():
    values = [torch.tensor(1.5), None, 2.0, torch.tensor(float("inf")), torch.tensor(3, dtype=torch.int64)]
    assert _floats(values) == [1.5, None, 2.0, float("inf"), 3.0]
    assert _floats([]) == [] and _floats([None]) == [None]
