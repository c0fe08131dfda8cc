"""Suite-wide fixtures."""

import faiss
import pytest
import torch


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """An app under test sets process-wide thread counts (NPID_TORCH_THREADS); later tests get them back."""
    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(faiss_threads)
