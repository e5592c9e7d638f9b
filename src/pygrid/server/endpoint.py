"""One decorator per route: it authenticates, checks the declared permission, validates the
JSON body and query string with pydantic, and records all of it for the OpenAPI document.

The permission check runs before validation, so a caller without the right is refused (403)
whatever they send.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError

from pygrid.auth.roles import Permission, has_permission
from pygrid.errors import Forbidden, InvalidInput, PyGridError, Unauthorized

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class RouteSpec:
    """What a route takes, returns and requires; read by the OpenAPI generator and the tests."""

    summary: str
    methods: tuple[str, ...]
    public: bool
    permission: Permission | None
    worker: bool = False
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    files: tuple[str, ...] = ()
    response: type[BaseModel] | None = None
    status: int = 200
    content: str = "application/json"
    tags: tuple[str, ...] = field(default_factory=tuple)


class UnsupportedMediaType(PyGridError):
    """The request body is not JSON."""

    status = 415
    code = "unsupported_media_type"


class MalformedBody(PyGridError):
    """The body claims to be JSON but does not parse."""

    status = 400
    code = "malformed_body"


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as a short JSON-safe list: where, what, and why."""
    return [
        {"loc": ".".join(str(p) for p in err["loc"]), "type": err["type"], "msg": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def parse_model(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    """Validate ``data`` against ``model``; InvalidInput naming each bad field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = validation_detail(exc)
        fields = ", ".join(d["loc"] or where for d in detail)
        raise InvalidInput(f"invalid {where}: {fields}", detail) from None


def _json_body() -> Any:
    if not request.is_json:
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {request.mimetype or 'none'!r}"
        )
    data = request.get_json(silent=True)
    if data is None:
        raise MalformedBody("request body is not valid JSON")
    return data


def _form_dict() -> dict[str, Any]:
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(
            f"expected Content-Type multipart/form-data, got {request.mimetype or 'none'!r}"
        )
    return request.form.to_dict()


def _query_dict() -> dict[str, Any]:
    return {key: values[0] if len(values) == 1 else values for key, values in request.args.lists()}


def endpoint(
    bp: Blueprint,
    rule: str,
    *,
    methods: tuple[str, ...] = ("GET",),
    summary: str,
    permission: Permission | None = None,
    public: bool = False,
    worker: bool = False,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    form: type[BaseModel] | None = None,
    files: tuple[str, ...] = (),
    response: type[BaseModel] | None = None,
    status: int = 200,
    content: str = "application/json",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a view on ``bp``; see the module docstring for what it does before the view runs.

    ``worker=True`` routes take a worker token instead of a user token (``g.worker``).
    """
    if set(methods) & MUTATING_METHODS and not (public or worker) and permission is None:
        raise TypeError(f"mutating route {rule} must declare a permission (or public=True)")
    spec = RouteSpec(
        summary=summary,
        methods=methods,
        public=public,
        permission=permission,
        worker=worker,
        body=body,
        query=query,
        form=form,
        files=files,
        response=response,
        status=status,
        content=content,
        tags=(bp.name,),
    )

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            if worker:
                g.worker = current_app.extensions["pygrid.workers"].current_worker()
            elif not public:
                user = current_app.extensions["pygrid.auth"].current_user()
                if permission is not None and not has_permission(user.role, permission):
                    raise Forbidden(f"this needs the {permission} permission", {"role": user.role})
                g.user = user
            if body is not None:
                kwargs["body"] = parse_model(body, _json_body(), "body")
            if form is not None:
                kwargs["form"] = parse_model(form, _form_dict(), "form")
            if query is not None:
                kwargs["query"] = parse_model(query, _query_dict(), "query")
            result = view(**kwargs)
            if isinstance(result, BaseModel):
                out: Response = jsonify(result.model_dump(mode="json", by_alias=True))
                out.status_code = status
                return out
            return result

        wrapper.__pygrid_spec__ = spec  # type: ignore[attr-defined]
        bp.add_url_rule(rule, view_func=wrapper, methods=list(methods))
        return wrapper

    return decorate


def route_spec(view: Callable[..., Any]) -> RouteSpec | None:
    """The RouteSpec a view was registered with, or None for routes outside this decorator."""
    return getattr(view, "__pygrid_spec__", None)


def bearer_token() -> str:
    """The token from ``Authorization: Bearer ...``; Unauthorized if absent."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "missing bearer token: send Authorization: Bearer <token from /users/login>"
        )
    return token.strip()
