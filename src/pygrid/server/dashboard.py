"""What the Node and Network dashboards share: log in, sessions, CSRF, permissions, base pages.

The dashboards are server-rendered pages under ``/dashboard/``. People log in with a form, with
the email and password they give ``POST /users/login``. The Flask session cookie (signed with the
app's SECRET_KEY; HttpOnly, SameSite=Lax, named after the server so that several servers on one
host keep their own) holds the user id, their ``token_version`` and role at log-in (a changed
password or role ends the session, as it ends their bearer tokens), the log-in time, and a CSRF
token that every POST form sends back.

Every dashboard route is declared with :func:`page`, which records a :class:`PageSpec`: a
RouteSpec saying "session cookie, not bearer token". tests/integration/test_permissions.py finds
each mutating dashboard route through it and tries it as every role, as it does ``@endpoint``
routes.
"""

from __future__ import annotations

import functools
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from werkzeug.wrappers import Response as BaseResponse

import pygrid
from pygrid import users
from pygrid.auth.roles import Permission, has_permission
from pygrid.db.models import User
from pygrid.errors import PyGridError
from pygrid.server.database import db_session
from pygrid.server.endpoint import MUTATING_METHODS, RouteSpec

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
PREFIX = "/dashboard"
# A dashboard session ends this long after log-in, whatever happens in between.
SESSION_MAX_AGE = 12 * 3600
CSRF_FIELD = "csrf_token"
# Scripts, styles and the chart library are files served by the app: no inline script, no
# inline handler, no CDN. The page data a script needs is a JSON <script type="application/json">
# block, which the browser does not execute.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)


@dataclass(frozen=True)
class PageSpec(RouteSpec):
    """A dashboard route: the session cookie (and a CSRF token on POST) instead of a token."""

    session: bool = True


@dataclass(frozen=True)
class NavItem:
    """A link in the dashboard's header, shown to those who hold ``permission``."""

    endpoint: str
    label: str
    permission: Permission | None = None


def dashboard_blueprint(name: str, import_name: str, nav: Sequence[NavItem]) -> Blueprint:
    """A blueprint under ``/dashboard`` with the log-in pages, the shared templates and static
    files; the app's own pages add ``.index`` (where log-in leads) and the rest with ``page``."""
    bp = Blueprint(
        name,
        import_name,
        url_prefix=PREFIX,
        template_folder=str(TEMPLATES),
        static_folder=str(STATIC),
        static_url_path="/static",
    )
    bp.record_once(_configure_session_cookie)
    bp.after_request(_security_headers)
    bp.register_error_handler(PyGridError, _error_page)

    @bp.context_processor
    def _context() -> dict[str, Any]:
        user = g.get("dashboard_user")
        settings = current_app.config["PYGRID_SETTINGS"]
        return {
            "csrf_token": csrf_token,
            "csrf_field": CSRF_FIELD,
            "user": user,
            "can": lambda permission: (
                user is not None and has_permission(user.role, Permission(permission))
            ),
            "nav": [
                item
                for item in nav
                if user is not None
                and (item.permission is None or has_permission(user.role, item.permission))
            ],
            "server": {"app": str(settings.app), "id": settings.id},
            "version": pygrid.__version__,
            "ago": ago,
            "when": when,
        }

    page(bp, "/login", methods=("GET", "POST"), summary="Dashboard log-in form", public=True)(
        _login
    )
    page(bp, "/logout", methods=("POST",), summary="Log out of the dashboard", public=True)(_logout)
    return bp


def page(
    bp: Blueprint,
    rule: str,
    *,
    summary: str,
    methods: tuple[str, ...] = ("GET",),
    permission: Permission | None = None,
    public: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a dashboard view: logged-in users only (unless ``public``), holding
    ``permission`` if given; a mutating view must declare one, as ``@endpoint`` routes must."""
    if set(methods) & MUTATING_METHODS and not public and permission is None:
        raise TypeError(f"mutating dashboard route {rule} must declare a permission")
    spec = PageSpec(
        summary=summary,
        methods=methods,
        public=public,
        permission=permission,
        content="text/html",
        tags=(bp.name,),
    )

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        # a wrapper of its own even when public: the log-in view serves both apps' blueprints
        wrapper = (
            functools.wraps(view)(_as_is(view)) if public else login_required(permission)(view)
        )
        wrapper.__pygrid_spec__ = spec  # type: ignore[attr-defined]
        bp.add_url_rule(
            rule, endpoint=view.__name__.lstrip("_"), view_func=wrapper, methods=methods
        )
        return wrapper

    return decorate


def _as_is(view: Callable[..., Any]) -> Callable[..., Any]:
    def call(**kwargs: Any) -> Any:
        return view(**kwargs)

    return call


def login_required(
    permission: Permission | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Not logged in: off to the log-in page. A POST without the session's CSRF token: 400.
    Logged in without ``permission``: a 403 page. Otherwise the view runs with ``g.user``."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            user = session_user()
            if user is None:
                target = request.full_path.rstrip("?") if request.method == "GET" else None
                return redirect(url_for(".login", next=target), 303)
            if request.method in MUTATING_METHODS and not csrf_ok():
                return refuse(400, "the form's CSRF token is missing or stale: reload the page")
            if permission is not None and not has_permission(user.role, permission):
                return refuse(403, f"this needs the {permission} permission")
            g.user = user
            return view(**kwargs)

        return wrapper

    return decorate


def session_user() -> User | None:
    """The user the session cookie names, if the session is still good; None otherwise."""
    if "dashboard_user" in g:
        user: User | None = g.dashboard_user
        return user
    user = None
    user_id = session.get("uid")
    if isinstance(user_id, int) and time.time() - session.get("at", 0) < SESSION_MAX_AGE:
        found = db_session().get(User, user_id)
        # As for bearer tokens: a new password or role ends the sessions opened before it.
        if found is not None and (found.token_version, found.role) == (
            session.get("ver"),
            session.get("role"),
        ):
            user = found
    if user is None and user_id is not None:
        session.clear()
    g.dashboard_user = user
    return user


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok() -> bool:
    """Whether the form sent this session's CSRF token."""
    expected = session.get("csrf")
    sent = request.form.get(CSRF_FIELD, "")
    return isinstance(expected, str) and hmac.compare_digest(sent.encode(), expected.encode())


def refuse(status: int, message: str) -> tuple[str, int]:
    """An HTML error page."""
    return render_template("dashboard/error.html", status=status, message=message), status


def done(message: str, endpoint: str, category: str = "ok", **values: Any) -> BaseResponse:
    """Flash ``message`` and go to ``endpoint`` (Post/Redirect/Get)."""
    flash(message, category)
    return redirect(url_for(endpoint, **values), 303)


def ago(moment: datetime | str | None) -> str:
    """'12 s ago', '3 min ago', '2 h ago', '4 d ago' (UTC when naive); 'never' for None."""
    if moment is None:
        return "never"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def when(moment: datetime | str | None) -> str:
    """A moment as 'YYYY-MM-DD HH:MM:SS UTC'; '—' for None."""
    if moment is None:
        return "—"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _safe_next(target: str | None) -> str:
    """Where to go after log-in: a dashboard path on this server, never another site."""
    if target:
        parts = urlsplit(target)
        path = parts.path
        if (
            not parts.scheme
            and not parts.netloc
            and "\\" not in target
            and (path == PREFIX or path.startswith(PREFIX + "/"))
            and not path.startswith(f"{PREFIX}/logout")
        ):
            return target
    return url_for(".index")


def _login() -> Any:
    """The log-in form; a good email and password open a session (a new one: no fixation)."""
    if request.method == "POST":
        if not csrf_ok():
            return refuse(400, "the form's CSRF token is missing or stale: reload the page")
        email = request.form.get("email", "")[:254]
        password = request.form.get("password", "")[:1024]
        user = users.authenticate(db_session(), email, password)
        if user is None:
            page_html = render_template(
                "dashboard/login.html",
                error="wrong email or password",
                email=email,
                next=_safe_next(request.form.get("next")),
            )
            return page_html, 401
        session.clear()
        session.update(
            uid=user.id,
            ver=user.token_version,
            role=user.role,
            at=int(time.time()),
            csrf=secrets.token_urlsafe(32),
        )
        return redirect(_safe_next(request.form.get("next")), 303)
    if session_user() is not None:
        return redirect(_safe_next(request.args.get("next")), 303)
    return render_template("dashboard/login.html", next=_safe_next(request.args.get("next")))


def _logout() -> Any:
    """End the session."""
    if not csrf_ok():
        return refuse(400, "the form's CSRF token is missing or stale: reload the page")
    session.clear()
    return done("You are logged out.", ".login")


def _configure_session_cookie(state: BlueprintSetupState) -> None:
    config = state.app.config
    settings = config["PYGRID_SETTINGS"]
    # Cookies do not tell ports apart: a Network and Nodes on one host would overwrite each
    # other's session under Flask's default name.
    if config["SESSION_COOKIE_NAME"] == "session":
        server = re.sub(r"[^A-Za-z0-9_-]", "_", f"{settings.app}_{settings.id}")
        config["SESSION_COOKIE_NAME"] = f"pygrid_{server}_session"
    config["SESSION_COOKIE_HTTPONLY"] = True
    if config["SESSION_COOKIE_SAMESITE"] is None:
        config["SESSION_COOKIE_SAMESITE"] = "Lax"


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        # Pages show who may do what: a shared browser's back button must not replay them.
        response.headers["Cache-Control"] = "no-store"
    return response


def _error_page(exc: PyGridError) -> tuple[str, int]:
    return refuse(exc.status, exc.message)
