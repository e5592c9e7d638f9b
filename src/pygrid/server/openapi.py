"""OpenAPI 3.1 for every route of an app, generated from the pydantic models that validate them."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from pydantic import BaseModel

import pygrid
from pygrid.server.endpoint import route_spec

_CONVERTER = re.compile(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
_REF = "#/components/schemas/{model}"

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {}},
}


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def _error(description: str) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def build_openapi(app: Flask, title: str) -> dict[str, Any]:
    """The OpenAPI document of ``app``: every URL rule, with schemas where the route declares them."""
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        view = app.view_functions[rule.endpoint]
        spec = route_spec(view)
        params = [
            {"name": arg, "in": "path", "required": True, "schema": {"type": "string"}}
            for arg in sorted(rule.arguments)
        ]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {"operationId": f"{rule.endpoint}.{method.lower()}"}
            responses: dict[str, Any] = {"4XX": _error("the request was refused; see error")}
            if spec is None:
                op["summary"] = (view.__doc__ or rule.endpoint).strip().splitlines()[0]
                responses["200"] = {"description": "OK"}
            else:
                op["summary"] = spec.summary
                op["tags"] = list(spec.tags)
                if spec.query is not None:
                    params = params + _query_parameters(spec.query)
                if spec.body is not None:
                    op["requestBody"] = {
                        "required": True,
                        "content": {"application/json": {"schema": _schema(spec.body, components)}},
                    }
                if spec.form is not None:
                    schema = spec.form.model_json_schema(ref_template=_REF)
                    components.update(schema.pop("$defs", {}))
                    for name in spec.files:
                        schema.setdefault("properties", {})[name] = {
                            "type": "string",
                            "contentMediaType": "application/octet-stream",
                        }
                    op["requestBody"] = {
                        "required": True,
                        "content": {"multipart/form-data": {"schema": schema}},
                    }
                ok: dict[str, Any] = {"description": "OK"}
                if spec.response is not None:
                    ok["content"] = {spec.content: {"schema": _schema(spec.response, components)}}
                responses[str(spec.status)] = ok
                if getattr(spec, "session", False):
                    # A dashboard page: HTML, the session cookie, a CSRF token on every form.
                    ok["content"] = {"text/html": {"schema": {"type": "string"}}}
                    if not spec.public:
                        op["security"] = [{"session": []}]
                        responses["302"] = {"description": "not logged in: to the log-in page"}
                    if spec.permission is not None:
                        op["x-permission"] = str(spec.permission)
                        responses["403"] = {
                            "description": f"needs the {spec.permission} permission"
                        }
                elif spec.worker:
                    op["security"] = [{"worker": []}]
                    responses["401"] = _error("missing, invalid, expired or revoked worker token")
                elif not spec.public:
                    op["security"] = [{"bearer": []}]
                    responses["401"] = _error("missing, invalid or expired token")
                    if spec.permission is not None:
                        op["x-permission"] = str(spec.permission)
                        responses["403"] = _error(f"needs the {spec.permission} permission")
            if params:
                op["parameters"] = params
            op["responses"] = responses
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": pygrid.__version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "worker": {"type": "http", "scheme": "bearer", "bearerFormat": "pgw_<id>_<secret>"},
                "session": {"type": "apiKey", "in": "cookie", "name": "pygrid_<app>_<id>_session"},
            },
        },
    }
