"""Index versions: the list with each version's quality (GET /versions), and promotion by hand
(POST /versions/{version}/publish) of a version the promotion gate kept back (service/promotion.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from index import IndexStoreError, VersionNotFoundError

from ..auth import require_api_key, require_read_access
from ..deps import get_engine
from ..engine import Engine
from ..schemas import ErrorResponse

router = APIRouter(prefix="/versions", tags=["versions"])


class VersionOut(BaseModel):
    version: str
    current: bool
    created: str | None
    vectors: int | None
    origin: str | None = Field(description="build (a training job), add, remove, ...")
    quality: dict | None = Field(description="label-free quality at publish (trainer/quality.py)")
    knn_top1: float | None = Field(description="leave-one-out kNN top-1 (%), when the folders are labels")
    damaged: str | None = None


def _out(info) -> VersionOut:
    m = info.manifest
    if m is None:
        return VersionOut(version=info.version, current=info.current, created=None, vectors=None, origin=None,
                          quality=None, knn_top1=None, damaged=info.problem)
    metrics = (m.get("training") or {}).get("metrics") or {}
    knn = metrics.get("knn") or {}
    top1 = next((v for k, v in knn.items() if k.startswith("top1@")), None)
    return VersionOut(version=info.version, current=info.current, created=m.get("created"),
                      vectors=m["counts"]["vectors"], origin=m["origin"]["kind"], quality=metrics.get("quality"),
                      knn_top1=top1)


@router.get("", response_model=list[VersionOut], dependencies=[Depends(require_read_access)])
def list_versions(engine: Engine = Depends(get_engine)) -> list[VersionOut]:
    """Every kept version, newest first, with its quality: compare before publishing one by hand."""
    return [_out(i) for i in reversed(engine.store.list())]


@router.post("/{version}/publish", response_model=VersionOut, dependencies=[Depends(require_api_key)],
             responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
def publish_version(version: str, engine: Engine = Depends(get_engine)) -> VersionOut:
    """Make a kept version current (e.g. one a job built but the gate did not publish); it serves at once."""
    if version not in engine.store.versions():
        raise HTTPException(404, f"no version {version}")
    try:
        engine.store.publish(version)
    except VersionNotFoundError as e:
        raise HTTPException(404, str(e)) from e
    except IndexStoreError as e:  # damaged files: the current version stays
        raise HTTPException(409, f"version {version} cannot be published: {e}") from e
    engine.check_for_new_version()
    return _out(next(i for i in engine.store.list() if i.version == version))
