"""Request bodies bounded by the bytes that arrive, not by what the headers claim.

A ``Content-Length`` over the limit is refused before a byte is read; a body sent
chunked (no length) or longer than it said is cut once the limit is passed, while
it streams: the app's read fails, and whatever it would have answered is replaced
by a 413. So a client cannot make the server buffer or spool more than the limit,
whichever route it aims at (sign-in is public).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyTooLarge(Exception):
    """The body passed its limit while it was read (the middleware answers 413)."""


class BodyLimit:
    """ASGI middleware: ``limit_for(scope)`` bytes at most per request body."""

    def __init__(self, app: Callable[..., Awaitable[None]],
                 limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _refuse(send, limit)
            return
        seen = 0
        over = started = False

        async def limited_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise BodyTooLarge(f"request body larger than {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return  # its answer to a cut body (a 400 from a parser, say) is not sent
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await _refuse(send, limit)


async def _refuse(send, limit: int) -> None:
    body = json.dumps({"detail": f"Request body larger than {limit} bytes."}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
