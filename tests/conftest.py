"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine run ~10x faster on one thread than on two.

    Not autouse: a module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`, so
    other test files keep torch's default thread count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory):
    """Random Inception (both public formats) and I3D weight files (tests/metric_weights.py), made once."""
    from tests.metric_weights import write_weights

    return write_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP in a transformers directory (tests/metric_weights.py), made once."""
    from tests.metric_weights import write_clip

    return write_clip(tmp_path_factory.mktemp("clip"))
