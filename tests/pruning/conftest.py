import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The pruning tests are many small ops: one thread avoids contention on a shared box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
