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
