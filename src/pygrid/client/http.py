"""The HTTP layer every client shares: one session, timeouts, and errors that say what failed."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import requests


class GridError(Exception):
    """A PyGrid server refused a request (4xx/5xx) or could not be reached."""

    def __init__(self, status: int | None, message: str, detail: Any = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.detail = detail


def base_url(url: str, node_id: str | None = None) -> str:
    """``url`` itself; with ``node_id``, ``url`` is a Network and this is its route to that
    Node, ``<url>/nodes/<node_id>``, under which every Node path works unchanged."""
    url = url.rstrip("/")
    if node_id is None:
        return url
    if not node_id or not isinstance(node_id, str):
        raise ValueError(f"node_id must be a non-empty string, not {node_id!r}")
    return f"{url}/nodes/{quote(node_id, safe='')}"


class HttpClient:
    """JSON and bytes over HTTP to one server, with an optional bearer token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = requests.Session()
        # A proxy from the environment must not see traffic to this machine's own servers.
        host = urlsplit(self.url).hostname or ""
        if host in {"localhost", "::1"} or host.startswith("127."):
            self.session.trust_env = False
        self._credentials: tuple[str, str] | None = None

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send a request; GridError for a refusal or an unreachable server."""
        headers = kwargs.pop("headers", {})
        kwargs.setdefault("timeout", self.timeout)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.session.request(method, f"{self.url}{path}", headers=headers, **kwargs)
        except requests.RequestException as exc:
            raise GridError(None, f"cannot reach {self.url}: {exc.__class__.__name__}") from exc
        if response.status_code == 401 and self._credentials and path != "/users/login":
            # Login tokens are short-lived: a long run logs in again once, then retries.
            self.login(*self._credentials)
            headers["Authorization"] = f"Bearer {self.token}"
            for upload in (kwargs.get("files") or {}).values():
                upload[1].seek(0)  # the first attempt consumed the file objects
            response = self.session.request(method, f"{self.url}{path}", headers=headers, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
                raise GridError(
                    response.status_code, body.get("error", response.reason), body.get("detail")
                )
            except ValueError:
                raise GridError(response.status_code, response.reason or "error") from None
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a request."""
        return self.request(method, path, **kwargs).json()

    def login(self, email: str, password: str) -> str:
        """Log in and keep the token for later requests."""
        answer = self.json("POST", "/users/login", json={"email": email, "password": password})
        self.token = str(answer["token"])
        self._credentials = (email, password)
        return self.token
