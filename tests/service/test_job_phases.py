"""Cancel works in every phase of a job, against a real Redis job record: a cancel request stops the job at the
next check of the phase it is in (loading, embedding, measuring, indexing/publishing), and nothing is published."""

from __future__ import annotations

import pytest
import torch
from processes import empty_redis_db

from index import ArtifactStore
from service.jobs.pipeline import _reindex, image_cache_dir, publish_unless_cancelled
from service.jobs.promotion import exported_collection, live_quality
from service.jobs.reporter import JobReporter
from service.jobs.store import JobStore
from service.live.collection import file_embedder
from trainer.cache import cached_folder
from trainer.preprocess import Preprocess
from trainer.progress import TrainingCancelled, ticker

URL = "redis://127.0.0.1:6379/12"


@pytest.fixture
def cancelled():
    """A running job whose cancel was requested, and its reporter (lease thread running)."""
    empty_redis_db(URL)
    store = JobStore(URL, lock_ttl_s=5, heartbeat_s=0.5)
    job = store.start(store.create("index", {}).id)
    store.cancel(job.id)
    with JobReporter(store, job) as reporter:
        yield job, reporter


def test_cancel_while_loading_and_embedding_a_reindex(cancelled, make_settings):
    job, reporter = cancelled
    settings = make_settings()
    before = ArtifactStore(settings.artifacts_dir).current_version()
    with pytest.raises(TrainingCancelled, match="loading"):  # the cache is empty: decoding is the first check
        _reindex(settings, job, reporter)
    assert ArtifactStore(settings.artifacts_dir).current_version() == before
    assert job.progress["phase"] == "loading"
    live = ArtifactStore(settings.artifacts_dir).load()
    cached_folder(settings.collection_root, Preprocess.load(live.directory / "preprocess.json"),
                  image_cache_dir(settings))  # decoded: nothing to decode, the embedding is the first check
    with pytest.raises(TrainingCancelled, match="embedding"):
        _reindex(settings, job, reporter)
    assert ArtifactStore(settings.artifacts_dir).current_version() == before


def test_cancel_while_measuring_the_live_version(cancelled, make_settings, trained_export):
    _, reporter = cancelled
    settings = make_settings()
    live = ArtifactStore(settings.artifacts_dir).load()
    ds = exported_collection(trained_export, settings.collection_root)
    with pytest.raises(TrainingCancelled, match="measuring"):  # another key: the live model re-embeds the gallery
        live_quality(live, ds, "another-key", torch.device("cpu"), False,
                     ticker("measuring", reporter.progress, reporter.should_stop))


def test_cancel_before_publishing_leaves_the_current_version(cancelled, make_settings, trained_export):
    _, reporter = cancelled
    settings = make_settings()
    store = ArtifactStore(settings.artifacts_dir)
    before = store.current_version()
    with pytest.raises(TrainingCancelled, match="before publishing"):
        publish_unless_cancelled(store, trained_export, reporter, store.next_id(),
                                 file_embedder(settings.collection_root, "cpu"))
    assert store.current_version() == before
    assert reporter.job.progress["phase"] == "indexing"  # the phase it was cancelled in
