"""Fixtures shared by the evaluation tests (import them into a test module to use them)."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models: one thread is faster, and much faster on a shared, busy CPU (no OpenMP waiting)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
