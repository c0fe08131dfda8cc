"""The store's index versions: what each is (a model version or an add/delete) with its quality, and making a
kept one current: a rollback, or the promotion by hand of a version the promotion gate held back
(service/jobs/promotion.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from starlette.concurrency import run_in_threadpool

from index import VersionInfo

from ...live import collection
from ..auth import READ, ReadAccess, WriteAccess
from ..deps import EngineDep, SettingsDep, WritesDep
from ..schemas import ErrorResponse, Ready, VersionEntry, Versions
from .common import INVALID, UNAVAILABLE, WRITE_AUTH

router = APIRouter(prefix="/versions", tags=["versions"])

MODEL_DIGEST_CHARS = 12
VersionName = Annotated[str, Path(pattern=r"^v\d{6,}$", description="a version name, e.g. v000003")]
NO_VERSION = {404: {"model": ErrorResponse, "description": "no such version"}}


def entry(info: VersionInfo) -> VersionEntry:
    m = info.manifest
    if m is None:
        return VersionEntry(version=info.version, current=info.current, kind="damaged", origin=None, model=None,
                            size=None, created=None, problem=info.problem)
    metrics = (m.get("training") or {}).get("metrics")
    return VersionEntry(version=info.version, current=info.current, kind=info.kind, origin=m["origin"]["kind"],
                        model=m["files"]["model.pt"]["sha256"][:MODEL_DIGEST_CHARS], size=m["counts"]["vectors"],
                        created=m["created"], quality=m.get("quality"), metrics=metrics)


@router.get("", response_model=Versions, responses=INVALID, openapi_extra=READ, dependencies=[ReadAccess])
async def list_versions(engine: EngineDep) -> Versions:
    """Every version kept in the store, oldest first, with its label-free quality: compare before publishing one
    by hand. Keep-N applies to model versions (trainings, re-indexes) and, separately, to update versions
    (adds, deletes, compactions)."""
    infos = await run_in_threadpool(engine.store.list)
    return Versions(versions=[entry(i) for i in infos])


@router.post("/{version}/publish", response_model=Ready, dependencies=[WriteAccess],
             responses={**NO_VERSION, 409: {"model": ErrorResponse, "description": "the version is damaged"},
                        **INVALID, **WRITE_AUTH, **UNAVAILABLE})
async def publish_version(version: VersionName, engine: EngineDep, writes: WritesDep, settings: SettingsDep) -> Ready:
    """Serve a kept version's model and collection: roll back to an older version, or promote one a job built
    but the promotion gate kept back. What happened since is carried: images deleted since stay deleted, images
    added since are embedded with that model and keep their ids (then the answer names a new version)."""
    if version not in engine.store.versions():
        raise HTTPException(404, f"no version {version} in the store")
    embed = collection.file_embedder(settings.collection_root, engine.device)
    live = await run_in_threadpool(writes.rollback, version, embed)  # IndexStoreError, VersionRefused: errors.py
    return Ready.of(live)
