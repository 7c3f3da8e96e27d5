import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module, restored afterwards.

    The tensors in these modules are small: one thread runs them faster than two threads handed
    between two busy cores, and calls compared for exact equality all use the same count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
