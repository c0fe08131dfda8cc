"""GET /duplicates: the groups of near-duplicate images of the live version (service/live/duplicates.py)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from index import display_path
from index.duplicates import NEIGHBOURS, Group

from ...live.version import LiveVersion
from ..auth import READ, ReadAccess
from ..deps import DuplicatesDep, LiveDep, RateLimited
from ..schemas import DuplicateGroup, DuplicateMember, DuplicatesResponse
from .common import INVALID, LIMITED, UNAVAILABLE

router = APIRouter(tags=["duplicates"])

Threshold = Annotated[float | None, Query(ge=-1.0, le=1.0, description="link images whose cosine is at least this "
                                                                       "(default: the version's calibrated one)")]


def group(live: LiveVersion, g: Group, max_members: int) -> DuplicateGroup:
    members = []
    for image_id, score in zip(g.ids[:max_members].tolist(), g.scores[:max_members].tolist(), strict=True):
        it = live.searcher.metadata.get(image_id)
        members.append(DuplicateMember(id=image_id, score=score, path=display_path(it.path),
                                       label=None if it.label is None else display_path(it.label),
                                       image_url=f"/images/{image_id}", thumbnail_url=f"/images/{image_id}/thumbnail"))
    return DuplicateGroup(size=g.size, best_score=g.best, members=members)


@router.get("/duplicates", response_model=DuplicatesResponse, responses={**INVALID, **LIMITED, **UNAVAILABLE},
            openapi_extra=READ, dependencies=[ReadAccess, RateLimited])
async def duplicates(live: LiveDep, found: DuplicatesDep, threshold: Threshold = None,
                     offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="groups to skip")] = 0,
                     limit: Annotated[int, Query(ge=1, le=100, description="groups to return")] = 20,
                     max_members: Annotated[int, Query(ge=2, le=1000, description="members listed per group "
                                                                                 "(best first)")] = 100,
                     ) -> DuplicatesResponse:
    """Groups of near-duplicate images of the live version (its base and its recent adds, not deleted images):
    each image is linked to its nearest other images (exact, over the stored embeddings, whatever the index kind)
    whose cosine reaches the threshold; the connected groups, largest first. Computed once per version and
    threshold, then paged from memory."""
    start = time.perf_counter()
    answer = await run_in_threadpool(found.groups, live, threshold)
    page = answer.groups[offset:offset + limit]
    return DuplicatesResponse(version=answer.version, threshold=answer.threshold.value,
                              threshold_source=answer.threshold.source, neighbours=NEIGHBOURS,
                              total_groups=len(answer.groups), total_images=answer.images, offset=offset, limit=limit,
                              took_ms=(time.perf_counter() - start) * 1000.0,
                              groups=[group(live, g, max_members) for g in page])
