"""Request and response models of the API: what the OpenAPI schema documents, and what the routes return."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from index import ListedKind, OriginKind

from ..live.version import LiveVersion
from ..live.watching import WatchProgress


class ErrorResponse(BaseModel):
    detail: str = Field(description="stable, human-readable reason")


class InvalidParameter(BaseModel):
    loc: list[str | int] = Field(description="where: body, query, path, then the field")
    msg: str
    type: str


class ValidationErrorResponse(ErrorResponse):
    errors: list[InvalidParameter] | None = Field(None, description="one entry per invalid parameter (absent when "
                                                                    "the image itself is unreadable)")


class SearchHit(BaseModel):
    id: int = Field(description="image id in the collection")
    score: float = Field(description="cosine similarity to the query, in [-1, 1], full precision")
    percentile: float = Field(description="share (%) of random pairs of the collection less similar than this "
                                          "hit: readable when cosines crowd near 1 (service/live/scores.py)")
    path: str = Field(description="path relative to the collection root")
    label: str | None = Field(None, description="class label, when the collection has labels")
    image_url: str
    thumbnail_url: str


class SearchResponse(BaseModel):
    version: str = Field(description="index version that answered")
    k_requested: int
    k_returned: int = Field(description="fewer than requested when the collection is smaller or min_score cuts")
    took_ms: float = Field(description="server time from the upload read to the answer")
    results: list[SearchHit]


class ImageAdded(BaseModel):
    id: int
    path: str
    label: str | None
    version: str = Field(description="index version the image was added to")
    collection_size: int
    image_url: str
    thumbnail_url: str


class AddedImage(BaseModel):
    id: int
    path: str
    label: str | None
    created: bool = Field(description="false: the same bytes were already in the collection, under this id")
    image_url: str
    thumbnail_url: str


class ImagesAdded(BaseModel):
    version: str = Field(description="index version holding the batch (one new version per batch)")
    collection_size: int
    images: list[AddedImage] = Field(description="one per uploaded file, in request order")


class ImageDeleted(BaseModel):
    id: int
    path: str
    version: str = Field(description="index version without the image")
    collection_size: int
    file_deleted: bool = Field(description="true for an upload (its file is removed); false: the file stays and "
                               "its path is tombstoned, so re-index and retrain leave it out")


class ImageEntry(BaseModel):
    id: int = Field(description="image id in the collection")
    path: str = Field(description="path relative to the collection root")
    label: str | None = Field(None, description="class label (first-level folder), when the collection has labels")
    added: str = Field(description="when the image entered the index (UTC, ISO 8601)")
    image_url: str
    thumbnail_url: str


class ImageList(BaseModel):
    version: str = Field(description="index version that answered")
    total: int = Field(description="images in the collection matching the label filter (deleted ones are not)")
    offset: int
    limit: int
    sort: Literal["newest", "path"]
    label: str | None = Field(description="the label filter, if any")
    labels: dict[str, int] = Field(description="images per label in the whole collection (unlabelled ones not "
                                               "counted): the choices of the filter")
    images: list[ImageEntry] = Field(description="at most `limit`, from `offset` in the chosen order")


class DuplicateMember(BaseModel):
    id: int = Field(description="image id in the collection")
    score: float = Field(description="its best cosine similarity to another member of the group")
    path: str
    label: str | None = None
    image_url: str
    thumbnail_url: str


class DuplicateGroup(BaseModel):
    size: int = Field(description="images in the group (members lists at most max_members of them)")
    best_score: float = Field(description="the highest cosine between two members")
    members: list[DuplicateMember] = Field(description="best score first")


class DuplicatesResponse(BaseModel):
    version: str = Field(description="index version that answered")
    threshold: float = Field(description="cosine at or above which two images are linked")
    threshold_source: Literal["request", "calibrated", "estimated", "nearest"] = Field(
        description="request: the threshold parameter; calibrated: measured when the version's model was "
                    "published (copies of sampled images against their nearest other images, without labels); "
                    "estimated: the same measure made by this server for a version published without it; "
                    "nearest: no measure possible (unreadable files), the top 5% of nearest-neighbour cosines")
    neighbours: int = Field(description="nearest other images examined per image (exact, over the stored "
                                        "embeddings)")
    total_groups: int
    total_images: int = Field(description="images in some group")
    offset: int
    limit: int
    took_ms: float
    groups: list[DuplicateGroup] = Field(description="largest first, then by best score")


class VersionEntry(BaseModel):
    version: str
    current: bool
    kind: ListedKind = Field(
        description="model: a training or re-index (keep-N counts these); update: an add, delete, move, replace "
                    "or compaction; damaged: its manifest fails its checksum")
    origin: OriginKind | None = Field(description="build (a training, re-index or carried rollback), add, remove, "
                                                  "move (a file renamed or moved: same id), replace (a file's bytes "
                                                  "replaced: same id, embedded again) or compact")
    model: str | None = Field(description="SHA-256 prefix of the version's model.pt")
    size: int | None = Field(description="images in the collection")
    created: str | None
    quality: dict | None = Field(None, description="quality figures recorded in the manifest, when any")
    metrics: dict | None = Field(None, description="training metrics recorded in the manifest, when any")
    problem: str | None = None


class Versions(BaseModel):
    versions: list[VersionEntry] = Field(description="oldest first")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class WatchStatus(BaseModel):
    """The folder watcher's progress (`npid watch`, service/watch/), as it last wrote it."""

    state: str = Field(description="starting, waiting (no version yet), scanning, applying or watching")
    pending: int = Field(description="files noticed and not applied yet: settling, or waiting to be embedded")
    done: int = Field(description="files added, replaced, moved or removed since the watcher started")
    skipped: int = Field(description="unreadable files left out")
    scans: int = Field(description="full rescans of the folder finished")
    last_change: str | None = Field(description="when the watcher last published a version (UTC, ISO 8601)")
    last_scan: str | None = Field(description="when its last full rescan finished")
    watcher: str = Field(description="host:pid of the watcher")
    updated: str = Field(description="when this record was written")
    stale: bool = Field(description="not rewritten for a minute: the watcher has stopped")


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    version: str
    collection_size: int
    dim: int = Field(description="embedding size")
    loaded_at: str = Field(description="when this version went live (UTC, ISO 8601)")
    quality: dict | None = Field(None, description="label-free quality measured at publish (trainer/quality.py): "
                                                   "self_top1, self_top10, alignment, uniformity, sample_size; "
                                                   "duplicate_threshold (GET /duplicates' default) with its "
                                                   "duplicate_recall, duplicate_nearest_above, duplicate_sample")
    knn: dict | None = Field(None, description="leave-one-out kNN of the collection, when its folders are labels")
    watch: WatchStatus | None = Field(None, description="the folder watcher's progress; null when watching is off "
                                                        "(NPID_WATCH=0) or no watcher has run")

    @classmethod
    def of(cls, live: LiveVersion, watch: WatchProgress | None = None) -> Ready:
        return cls(version=live.version, collection_size=live.size, dim=live.dim,
                   loaded_at=live.loaded_at.isoformat(timespec="seconds"), quality=live.quality, knn=live.knn,
                   watch=None if watch is None else WatchStatus(
                       **{k: getattr(watch, k) for k in WatchStatus.model_fields if k != "stale"}, stale=watch.stale))
