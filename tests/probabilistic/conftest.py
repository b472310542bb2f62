"""Run these tests single-threaded: the filters make many calls on tiny batched matrices,
where an oversubscribed CI machine turns OpenMP's batched Cholesky into a spin-wait
(milliseconds per call instead of microseconds)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
