"""The store's index versions: what each is (a model version or an add/delete), and rolling back to one."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Path
from starlette.concurrency import run_in_threadpool

from index import DamagedVersionError, IndexStoreError, VersionInfo

from .. import collection
from ..auth import require_api_key, require_read_access
from ..deps import get_engine, get_settings
from ..engine import Engine, VersionRefused
from ..schemas import ErrorResponse, Ready, VersionEntry, Versions
from ..settings import Settings

router = APIRouter(prefix="/versions", tags=["versions"], dependencies=[Depends(require_read_access)])

MODEL_DIGEST_CHARS = 12


def entry(info: VersionInfo) -> VersionEntry:
    m = info.manifest
    if m is None:
        return VersionEntry(version=info.version, current=info.current, kind="damaged", origin=None, model=None,
                            size=None, created=None, problem=info.problem)
    return VersionEntry(version=info.version, current=info.current, kind=info.kind, origin=m["origin"]["kind"],
                        model=m["files"]["model.pt"]["sha256"][:MODEL_DIGEST_CHARS], size=m["counts"]["vectors"],
                        created=m["created"], quality=m.get("quality"),
                        metrics=(m.get("training") or {}).get("metrics"))


@router.get("", response_model=Versions)
async def list_versions(engine: Engine = Depends(get_engine)) -> Versions:
    """Every version kept in the store, oldest first. Keep-N applies to model versions (trainings, re-indexes)
    and, separately, to update versions (adds, deletes, compactions)."""
    infos = await run_in_threadpool(engine.store.list)
    return Versions(versions=[entry(i) for i in infos])


@router.post("/{version}/rollback", response_model=Ready, dependencies=[Depends(require_api_key)], responses={
    404: {"model": ErrorResponse, "description": "no such version"},
    409: {"model": ErrorResponse, "description": "the version is damaged"}, 503: {"model": ErrorResponse}})
async def rollback(version: str = Path(pattern=r"^v\d{6,}$"), engine: Engine = Depends(get_engine),
                   settings: Settings = Depends(get_settings)) -> Ready:
    """Serve a kept version's model and collection again, carrying what happened since: images deleted since
    stay deleted, images added since are embedded with that model and keep their ids (a new version)."""
    if version not in engine.store.versions():
        raise HTTPException(404, f"no version {version} in the store")
    embed = collection.file_embedder(settings.collection_root, engine.device)
    try:
        live = await run_in_threadpool(engine.rollback, version, embed)
    except DamagedVersionError as e:
        raise HTTPException(409, f"cannot roll back to {version}: {e}") from None
    except (IndexStoreError, VersionRefused) as e:
        raise HTTPException(503, str(e)) from None
    return Ready(version=live.version, collection_size=live.size, dim=live.dim,
                 loaded_at=live.loaded_at.isoformat())
