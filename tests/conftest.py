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


@pytest.fixture(autouse=True, scope="session")
def _private_image_cache(tmp_path_factory):
    """Decoded-image caches (trainer/cache.py) go to a per-session folder, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
    mp.undo()
