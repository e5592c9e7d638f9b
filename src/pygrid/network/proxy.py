"""Forward one request to a Node and stream its answer back (docs/network.md, ``/nodes/<id>/``).

Bodies are streamed both ways in chunks: neither the upload nor the Node's answer is ever held
in the Network's memory, and the Network's own ``MAX_CONTENT_LENGTH`` does not apply (the Node
enforces its limit). Only ``Authorization``, ``Content-Type``, ``Content-Length`` and ``Accept``
go to the Node; only the status, the body, ``Content-Type``, ``Content-Length`` and
``Content-Disposition`` come back, plus ``X-PyGrid-Node``.

A Node that does not answer within the route timeout costs the thread serving that request at
most the timeout, never another request: every wait on the Node (connect, first byte, each later
chunk) is bounded by it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import quote

import requests
import urllib3
from flask import Request, Response
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from werkzeug.wsgi import get_content_length, get_input_stream

import pygrid
from pygrid.errors import NotFound, PyGridError

log = logging.getLogger(__name__)

#: Bytes read from the client's upload and from the Node's answer at a time.
CHUNK = 256 * 1024
#: Request headers the Node sees (and Content-Length, which requests sets from the upload's
#: length); everything else (Host, Cookie, hop-by-hop, X-Forwarded-*) stays here.
REQUEST_HEADERS = ("Authorization", "Content-Type", "Accept")
#: Answer headers the client sees, besides X-PyGrid-Node.
RESPONSE_HEADERS = ("Content-Type", "Content-Length", "Content-Disposition")
NODE_HEADER = "X-PyGrid-Node"
#: Methods sent a second time (when bodiless) if the first try found the connection dropped.
RETRY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
# RFC 3986 pchar plus "/": a routed path is sent on percent-encoded exactly once.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class RouteError(PyGridError):
    """A routed request failed on the way to the Node; ``detail.code`` says how."""

    def __init__(self, message: str, node_id: str) -> None:
        super().__init__(message, {"code": self.code, "node_id": node_id})


class NodeUnreachable(RouteError):
    """The Node refused or dropped the connection before answering."""

    status = 502
    code = "node_unreachable"


class NodeTimeout(RouteError):
    """The Node did not answer within the route timeout."""

    status = 504
    code = "node_timeout"


class BadRoutedPath(NotFound):
    """A routed path with ``.`` or ``..`` segments: it could leave the Node's base URL."""

    code = "bad_routed_path"

    def __init__(self, path: str) -> None:
        super().__init__(f"no such route on a Node: /{path}", {"code": self.code})


class NodeStoppedMidBody(Exception):
    """The Node stopped sending in the middle of its answer.

    Raised from the body iterator after the status went out, so the WSGI server aborts the
    connection and the client sees a short body instead of a silently truncated one.
    """


class _Upload:
    """The client's body as an iterable of chunks with a length (so requests sends it with
    Content-Length instead of chunked), read from the WSGI stream as the Node takes it."""

    def __init__(self, stream: IO[bytes], length: int) -> None:
        self.stream = stream
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.stream.read(CHUNK):
            yield chunk


class Proxy:
    """Forwards requests to Nodes over one pooled HTTP session (thread-safe for this use)."""

    def __init__(self, timeout: float, pool_size: int = 32) -> None:
        self.timeout = timeout
        self.session = requests.Session()
        # The Network talks to Nodes directly: no environment proxy, and never a credential
        # from ~/.netrc added to a request that came without one.
        self.session.trust_env = False
        # identity: the body goes through byte for byte, so Content-Length stays true.
        self.session.headers = CaseInsensitiveDict(
            {"User-Agent": f"pygrid-network/{pygrid.__version__}", "Accept-Encoding": "identity"}
        )
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        """Close pooled connections to Nodes."""
        self.session.close()

    def forward(self, request: Request, node_id: str, node_url: str, path: str) -> Response:
        """Send ``request`` to ``<node_url>/<path>?<query>``; the Node's answer, streamed."""
        if any(part in {".", ".."} for part in path.split("/")):
            raise BadRoutedPath(path)
        url = f"{node_url.rstrip('/')}/{quote(path, safe=_PATH_SAFE)}"
        if request.query_string:
            url = f"{url}?{request.query_string.decode('latin-1')}"
        headers = {h: request.headers[h] for h in REQUEST_HEADERS if h in request.headers}
        body = _upload(request.environ)
        # A pooled connection the Node has just closed (idle keep-alive, a restart) fails the
        # first request sent on it: one that carries no body and changes nothing is sent again.
        attempts = 2 if body is None and request.method in RETRY_METHODS else 1
        for attempt in range(1, attempts + 1):
            try:
                upstream = self.session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body,
                    stream=True,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
                break
            except requests.Timeout:
                raise NodeTimeout(
                    f"node {node_id} did not answer within {self.timeout:g} s", node_id
                ) from None
            except requests.RequestException as exc:
                if attempt == attempts:
                    raise NodeUnreachable(
                        f"node {node_id} is unreachable: {_reason(exc)}", node_id
                    ) from None
        response = Response(
            _relay(upstream, node_id), status=upstream.status_code, direct_passthrough=True
        )
        del response.headers["Content-Type"]
        for name in RESPONSE_HEADERS:
            if name in upstream.headers:
                response.headers[name] = upstream.headers[name]
        response.headers[NODE_HEADER] = node_id
        # Also when the body is never read (HEAD, 204, a client gone before the first chunk).
        response.call_on_close(upstream.close)
        return response


def _upload(environ: dict[str, Any]) -> _Upload | Iterator[bytes] | None:
    """The client's body for requests: sized, chunked (no Content-Length), or none."""
    # Read past Flask's request.stream: that applies the Network's MAX_CONTENT_LENGTH (setting
    # request.max_content_length = None falls back to the app config), and the Node has its own.
    stream = get_input_stream(environ, max_content_length=None)
    length = get_content_length(environ)
    if length is not None:
        return _Upload(stream, length) if length > 0 else None
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return iter(lambda: stream.read(CHUNK), b"")
    return None


def _relay(upstream: requests.Response, node_id: str) -> Iterator[bytes]:
    """The Node's body chunk by chunk; a Node that stops mid-body aborts the client's answer."""
    try:
        yield from upstream.iter_content(CHUNK)
    except requests.RequestException as exc:
        log.warning("node %s stopped in the middle of its answer: %s", node_id, _reason(exc))
        raise NodeStoppedMidBody(f"node {node_id} stopped mid-body") from None
    finally:
        upstream.close()


def _reason(exc: BaseException) -> str:
    """Why a requests error happened, short: the socket error's text ("Connection refused")
    found among the wrapped exceptions, "timed out", else the error's class name."""
    found = _chain(exc)
    for error in found:
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
    if any(isinstance(e, TimeoutError | urllib3.exceptions.TimeoutError) for e in found):
        return "timed out"
    return exc.__class__.__name__


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it wraps (args, ``reason``, cause and context)."""
    found: list[BaseException] = []
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or any(current is e for e in found):
            continue
        found.append(current)
        pending += [*current.args, getattr(current, "reason", None)]
        pending += [current.__cause__, current.__context__]
    return found
