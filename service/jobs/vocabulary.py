"""The words a job is described with, defined once: its kind, its state, and the phase it is in. The job records
(store.py), the pipeline, the API's schemas (OpenAPI lists them as enums), `npid up` and the page use these."""

from __future__ import annotations

from typing import Literal

from trainer.progress import TrainPhase

JobKind = Literal["train", "index"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")

# the phases of a running job, in order: the trainer's own (trainer/train.py), then the pipeline's
Phase = Literal[TrainPhase, "measuring", "indexing", "publishing"]
PHASES: dict[Phase, str] = {
    "loading": "reading the collection (decoding new images into the cache), deciding the recipe, timing this "
               "machine, restoring a checkpoint",
    "training": "training the network and its memory bank, epoch by epoch",
    "embedding": "embedding the collection with the model (training jobs: with the trained one; index jobs: with "
                 "the live one)",
    "exporting": "writing the model, its embeddings and pictures into the run's export",
    "measuring": "measuring the new model's label-free quality beside the live version's (the promotion gate)",
    "indexing": "building the FAISS index of the new version (not yet published)",
    "publishing": "publishing the version, carrying the uploads and deletes made meanwhile",
}
