"""Request and response models of the API: what the OpenAPI schema documents, and what the routes return."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from index import ListedKind, OriginKind

from ..live.version import LiveVersion


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


class VersionEntry(BaseModel):
    version: str
    current: bool
    kind: ListedKind = Field(
        description="model: a training or re-index (keep-N counts these); update: an add, delete or compaction; "
                    "damaged: its manifest fails its checksum")
    origin: OriginKind | None = Field(description="build (a training, re-index or carried rollback), add, remove "
                                                  "or compact")
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


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    version: str
    collection_size: int
    dim: int = Field(description="embedding size")
    loaded_at: str = Field(description="when this version went live (UTC, ISO 8601)")
    quality: dict | None = Field(None, description="label-free quality measured at publish (trainer/quality.py): "
                                                   "self_top1, self_top10, alignment, uniformity, sample_size")
    knn: dict | None = Field(None, description="leave-one-out kNN of the collection, when its folders are labels")

    @classmethod
    def of(cls, live: LiveVersion) -> Ready:
        return cls(version=live.version, collection_size=live.size, dim=live.dim,
                   loaded_at=live.loaded_at.isoformat(timespec="seconds"), quality=live.quality, knn=live.knn)
