"""The request guards of the query API, run before any route or body parsing: the Host allow-list
(DNS rebinding), the API token (every write; reads too with `protect_reads`), the request-body budget
(Content-Length checked, streamed bytes counted, so an oversized multipart is never spooled), and the
product-id grammar and metadata limits the routes apply.

Pure ASGI; no index, no routes. The token is compared in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Product ids accepted by the API: 1-128 of letters, digits, `.`, `_`, `-`, not starting with a dot.
PRODUCT_ID_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
PRODUCT_ID_RE = re.compile(PRODUCT_ID_PATTERN)
PRODUCT_ID_RULE = "1 to 128 of A-Z a-z 0-9 . _ -, not starting with a dot"
#: Longest id a read route looks up (catalog ids may predate the grammar; they are still addressable).
MAX_ID_LENGTH = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: Host names a loopback-bound server answers by default.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: Paths always open (no token): the page, the docs and their assets, the liveness check.
PUBLIC_PATHS = ("/", "/health", "/docs", "/openapi.json")
PUBLIC_PREFIXES = ("/docs-assets/",)


def check_new_product_id(product_id: str) -> str | None:
    """None if `product_id` may be added, else the sentence saying why not."""
    if PRODUCT_ID_RE.fullmatch(product_id):
        return None
    shown = product_id if len(product_id) <= 40 else product_id[:40] + "..."
    return f"product_id {shown!r} is not valid: {PRODUCT_ID_RULE}."


def check_lookup_id(product_id: str) -> str | None:
    """None if a read/delete route may look `product_id` up, else the sentence saying why not
    (too long, or control characters)."""
    if len(product_id) > MAX_ID_LENGTH:
        return f"product_id is {len(product_id)} characters long, at most {MAX_ID_LENGTH} are allowed."
    if _CONTROL.search(product_id):
        return "product_id must not contain control characters."
    return None


def parse_metadata(text: str, *, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """The metadata JSON object of `POST /items`, within the size and nesting limits.

    Raises:
        ValueError: with the sentence to answer (422) when it is too large, too deep, not JSON or not an object.
    """
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise ValueError(f"metadata is {size} bytes, at most {max_bytes} are allowed.")
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:  # nesting measured before parsing: json.loads recurses once per level
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    if deepest > max_depth:
        raise ValueError(f"metadata is nested {deepest} levels deep, at most {max_depth} are allowed.")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"metadata is not valid JSON ({err}).") from None
    if not isinstance(value, dict):
        raise ValueError("metadata must be a JSON object.")
    return value


def is_write(method: str, path: str) -> bool:
    """Whether a request changes the index: POST /items, DELETE /items/..., anything under /admin."""
    if path.startswith("/admin"):
        return True
    if method == "DELETE":
        return True
    return method in ("POST", "PUT", "PATCH") and (path == "/items" or path.startswith("/items/"))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def presented_token(scope: Scope) -> str | None:
    """The token a request carries: `Authorization: Bearer T` or `X-API-Token: T`."""
    auth = _header(scope, b"authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return _header(scope, b"x-api-token")


def host_name(host_header: str) -> str:
    """The host of a Host header, without its port (`[::1]:8000` -> `[::1]`)."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class _BodyTooLarge(HTTPException):
    """Raised from `receive` when the streamed body passes the budget (the app's answer to it is
    replaced by a 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit}-byte limit.")


class RequestGuard:
    """ASGI wrapper applying the Host allow-list, the token and the body budget before the app runs.

    Args:
        app: the wrapped ASGI app.
        token: the API token; None: writes are refused (403) and reads are open.
        protect_reads: reads need the token too (except `PUBLIC_PATHS`).
        allowed_hosts: Host names answered (None or containing `*`: any).
        max_body_bytes: largest request body (413 above it, before the form is parsed).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        protect_reads: bool,
        allowed_hosts: list[str] | None,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.protect_reads = protect_reads
        self.hosts = None if allowed_hosts is None or "*" in allowed_hosts else {h.lower() for h in allowed_hosts}
        self.max_body = max_body_bytes

    async def _answer(self, send: Send, status: int, detail: str, headers: list | None = None) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + (headers or []),
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _authorised(self, scope: Scope) -> bool:
        given = presented_token(scope)
        return self.token is not None and given is not None and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = host_name((_header(scope, b"host") or "").lower())
        if self.hosts is not None and host not in self.hosts:
            await self._answer(send, 400, f"Host {host!r} is not allowed (serve --allowed-host).")
            return
        method, path = scope["method"], scope["path"]
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or method == "OPTIONS"
        if is_write(method, path):
            if self.token is None:
                await self._answer(send, 403, "writes are disabled: the server was started without --token.")
                return
            if not self._authorised(scope):
                await self._answer(send, 401, "this route needs the API token.", [(b"www-authenticate", b"Bearer")])
                return
        elif self.protect_reads and not public and not self._authorised(scope):
            await self._answer(send, 401, "reads need the API token (--protect-reads).", [(b"www-authenticate", b"Bearer")])
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._answer(send, 413, f"request body over the {self.max_body}-byte limit.")
            return
        await self._call_counting(scope, receive, send)

    async def _call_counting(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0
        overflowed = started = False

        async def counted_receive() -> Message:
            nonlocal seen, overflowed
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    overflowed = True
                    raise _BodyTooLarge(self.max_body)
            return message

        async def tracked_send(message: Message) -> None:
            # Whatever the app answers to a body cut short (FastAPI turns the exception into a 400
            # "error parsing the body"), the client gets the 413.
            nonlocal started
            if overflowed:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._answer(send, 413, f"request body over the {self.max_body}-byte limit.")
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await self._answer(send, 413, f"request body over the {self.max_body}-byte limit.")
