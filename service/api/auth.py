"""API key dependencies: writes always need the key, reads only when `protect_reads` is set.

401 when the X-API-Key header is missing, 403 when it is wrong or when the server has no key (writes
are then disabled). The comparison is constant-time.

The OpenAPI schema says the same: writes declare the key (a `Security` dependency); reads are marked with
`openapi_extra=READ` and declare it only when the server protects reads (`document_read_access`).
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from ..settings import Settings

API_KEY_HEADER = "X-API-Key"
SCHEME = "APIKeyHeader"
MISSING_KEY = f"missing API key: send it in the {API_KEY_HEADER} header"
WRONG_KEY = "invalid API key"
NO_KEY_CONFIGURED = "writes are disabled: the server has no API key configured"
READ: dict[str, Any] = {"x-npid-access": "read"}  # route marker, replaced by `document_read_access`

api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, scheme_name=SCHEME,
                              description="the server's key (NPID_API_KEY)")


def _check(settings: Settings, presented: str | None) -> None:
    if settings.api_key is None:
        raise HTTPException(403, NO_KEY_CONFIGURED)
    if not presented:
        raise HTTPException(401, MISSING_KEY, headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})
    if not key_matches(settings, presented):
        raise HTTPException(403, WRONG_KEY)


def key_matches(settings: Settings, presented: str | None) -> bool:
    if settings.api_key is None or not presented:
        return False
    return hmac.compare_digest(presented.encode(), settings.api_key.get_secret_value().encode())


def has_valid_key(request: Request) -> bool:
    """The caller presented the server's key (reads show more to it: job configs)."""
    return key_matches(request.app.state.settings, request.headers.get(API_KEY_HEADER))


async def require_api_key(request: Request, key: str | None = Security(api_key_header)) -> None:
    """For mutating endpoints."""
    _check(request.app.state.settings, key)


async def require_read_access(request: Request) -> None:
    """For read endpoints: open unless NPID_PROTECT_READS is set (the header is read directly, so that the
    schema declares no key on reads that need none)."""
    settings: Settings = request.app.state.settings
    if settings.protect_reads:
        _check(settings, request.headers.get(API_KEY_HEADER))


WriteAccess = Depends(require_api_key)
ReadAccess = Depends(require_read_access)


def document_read_access(schema: dict, protect_reads: bool) -> dict:
    """Declare the key (and its 401/403) on the operations marked READ when reads are protected."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if operation.pop("x-npid-access", None) != "read" or not protect_reads:
                continue
            operation["security"] = [{SCHEME: []}]
            for status, why in (("401", "missing API key"), ("403", "wrong API key")):
                operation["responses"][status] = {"description": why, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    if protect_reads:
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
            "type": "apiKey", "in": "header", "name": API_KEY_HEADER}
    return schema
