"""API key dependencies: writes always need the key, reads only when `protect_reads` is set.

401 when the X-API-Key header is missing, 403 when it is wrong or when the server has no key (writes
are then disabled). The comparison is constant-time.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from .settings import Settings

API_KEY_HEADER = "X-API-Key"
MISSING_KEY = f"missing API key: send it in the {API_KEY_HEADER} header"
WRONG_KEY = "invalid API key"
NO_KEY_CONFIGURED = "writes are disabled: the server has no API key configured"

api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description="the server's key (NPID_API_KEY)")


def _check(settings: Settings, presented: str | None) -> None:
    if settings.api_key is None:
        raise HTTPException(403, NO_KEY_CONFIGURED)
    if not presented:
        raise HTTPException(401, MISSING_KEY, headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})
    expected = settings.api_key.get_secret_value().encode()
    if not hmac.compare_digest(presented.encode(), expected):
        raise HTTPException(403, WRONG_KEY)


async def require_api_key(request: Request, key: str | None = Security(api_key_header)) -> None:
    """For mutating endpoints."""
    _check(request.app.state.settings, key)


async def require_read_access(request: Request, key: str | None = Security(api_key_header)) -> None:
    """For read endpoints: open unless NPID_PROTECT_READS is set."""
    settings: Settings = request.app.state.settings
    if settings.protect_reads:
        _check(settings, key)
