"""Moving bytes over HTTP: uploaded file fields in, blobs streamed out."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Response, current_app, request

from pygrid.errors import InvalidInput

STREAM_CHUNK = 1024 * 1024


def file_field(name: str) -> bytes:
    """The bytes of multipart file field ``name``; InvalidInput if it is missing."""
    upload = request.files.get(name)
    if upload is None:
        raise InvalidInput(f"file field {name!r} is missing", {"field": name})
    return upload.read()


def stream_blob(key: str, mimetype: str = "application/octet-stream") -> Response:
    """A response that streams blob ``key`` in chunks, with its Content-Length."""
    store = current_app.extensions["pygrid.blobs"]
    size = store.size(key)
    handle = store.open(key)

    def chunks() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(STREAM_CHUNK):
                yield chunk

    response = Response(chunks(), mimetype=mimetype)
    response.headers["Content-Length"] = str(size)
    return response
