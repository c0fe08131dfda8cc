"""Suite-wide fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """An app under test sets torch's process-wide thread count (NPID_TORCH_THREADS); later tests get it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
