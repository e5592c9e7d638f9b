"""``/users``: log in, and manage people and their roles."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from flask import Blueprint, Response, current_app, g
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pygrid import users
from pygrid.auth.roles import Permission, Role
from pygrid.auth.tokens import issue_token
from pygrid.db.models import User
from pygrid.errors import InvalidInput, Unauthorized
from pygrid.server.database import db_session
from pygrid.server.endpoint import endpoint

bp = Blueprint("users", __name__, url_prefix="/users")

Email = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
]
Password = Annotated[str, Field(min_length=1, max_length=1024)]
Name = Annotated[str, Field(max_length=200)]


class Strict(BaseModel):
    """Request models refuse unknown fields."""

    model_config = ConfigDict(extra="forbid")


class LoginRequest(Strict):
    """Credentials for ``POST /users/login``."""

    email: Email
    password: Password


class UserOut(BaseModel):
    """A user as the API shows it (never the password hash)."""

    id: int
    email: str
    name: str
    role: Role
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        """The public view of ``user``."""
        return cls(
            id=user.id,
            email=user.email,
            name=user.name,
            role=Role(user.role),
            created_at=user.created_at,
        )


class LoginResponse(BaseModel):
    """A short-lived bearer token and who it is for."""

    token: str
    token_type: str = "bearer"
    expires_at: int
    user: UserOut


class UserList(BaseModel):
    """Every user."""

    users: list[UserOut]


class NewUser(Strict):
    """``POST /users``."""

    email: Email
    password: Password
    role: Role
    name: Name = ""


class UserChange(Strict):
    """``PATCH /users/<id>``: any subset of name, password, role."""

    name: Name | None = None
    password: Password | None = None
    role: Role | None = None


class ProfileChange(Strict):
    """``PATCH /users/me``: your own name or password; a new password needs the current one."""

    name: Name | None = None
    password: Password | None = None
    current_password: Password | None = None


@endpoint(
    bp,
    "/login",
    methods=("POST",),
    summary="Log in; returns a short-lived JWT",
    public=True,
    body=LoginRequest,
    response=LoginResponse,
)
def login(body: LoginRequest) -> LoginResponse:
    """Exchange email and password for a token; the same answer whether the email exists or not."""
    user = users.authenticate(db_session(), body.email, body.password)
    if user is None:
        raise Unauthorized("wrong email or password")
    auth = current_app.extensions["pygrid.auth"]
    token, expires_at = issue_token(
        auth.secret, auth.issuer, user.id, user.role, user.token_version, auth.ttl_seconds
    )
    return LoginResponse(token=token, expires_at=expires_at, user=UserOut.of(user))


@endpoint(bp, "", summary="List users", permission=Permission.list_users, response=UserList)
def list_users() -> UserList:
    """Every user, oldest first."""
    return UserList(users=[UserOut.of(u) for u in users.list_users(db_session())])


@endpoint(
    bp,
    "",
    methods=("POST",),
    summary="Create a user with a role below yours",
    permission=Permission.manage_users,
    body=NewUser,
    response=UserOut,
    status=201,
)
def create_user(body: NewUser) -> UserOut:
    """Create a user."""
    user = users.create_user(
        db_session(), body.email, body.password, body.role, body.name, by=g.user
    )
    return UserOut.of(user)


@endpoint(bp, "/me", summary="The logged-in user", response=UserOut)
def me() -> UserOut:
    """Who the token belongs to."""
    return UserOut.of(g.user)


@endpoint(
    bp,
    "/me",
    methods=("PATCH",),
    summary="Change your own name or password",
    permission=Permission.edit_own_profile,
    body=ProfileChange,
    response=UserOut,
)
def update_me(body: ProfileChange) -> UserOut:
    """Change your own profile; your role is not yours to change."""
    session = db_session()
    if body.password is not None:
        if body.current_password is None:
            raise InvalidInput(
                "changing your password needs current_password", {"field": "current_password"}
            )
        if users.authenticate(session, g.user.email, body.current_password) is None:
            raise InvalidInput("current_password is wrong", {"field": "current_password"})
    user = users.update_user(session, g.user, g.user, name=body.name, password=body.password)
    return UserOut.of(user)


@endpoint(
    bp, "/<int:user_id>", summary="One user", permission=Permission.list_users, response=UserOut
)
def get_user(user_id: int) -> UserOut:
    """The user with ``user_id``."""
    return UserOut.of(users.get_user(db_session(), user_id))


@endpoint(
    bp,
    "/<int:user_id>",
    methods=("PATCH",),
    summary="Change a user's name, password or role",
    permission=Permission.manage_users,
    body=UserChange,
    response=UserOut,
)
def update_user(user_id: int, body: UserChange) -> UserOut:
    """Change a user ranked below you."""
    session = db_session()
    user = users.update_user(
        session,
        g.user,
        users.get_user(session, user_id),
        name=body.name,
        password=body.password,
        role=body.role,
    )
    return UserOut.of(user)


@endpoint(
    bp,
    "/<int:user_id>",
    methods=("DELETE",),
    summary="Delete a user ranked below you",
    permission=Permission.manage_users,
    status=204,
)
def delete_user(user_id: int) -> Response:
    """Delete a user."""
    session = db_session()
    users.delete_user(session, g.user, users.get_user(session, user_id))
    return Response(status=204)
