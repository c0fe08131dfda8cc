"""Request body cap, enforced while the body streams in, before anything parses or decodes it."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .uploads import UploadRejected, too_large

MULTIPART_SLACK = 64 * 1024  # bytes of multipart framing allowed on top of the file itself


class BodyLimitMiddleware:
    """413 when a request body passes `max_upload_bytes` (+ framing): at once from Content-Length, or as
    soon as the streamed byte count passes it (chunked bodies, lying headers)."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int, batch_paths: dict[str, int] | None = None):
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.batch_paths = batch_paths or {}  # path -> files one request may carry (each within the limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        files = self.batch_paths.get(scope["path"], 1)
        max_body = files * self.max_upload_bytes + MULTIPART_SLACK
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            await JSONResponse({"detail": too_large(self.max_upload_bytes)}, 413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:  # raised inside the route's body parsing: a JSON 413
                    raise UploadRejected(413, too_large(self.max_upload_bytes))
            return message

        await self.app(scope, limited_receive, send)
