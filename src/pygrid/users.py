"""Users: create, authenticate, update and delete people, with the role rules enforced here.

Pure service functions over a SQLAlchemy session; the HTTP views only translate.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pygrid.auth.passwords import hash_password, password_problem, verify_password
from pygrid.auth.roles import Role, can_grant
from pygrid.db.models import User
from pygrid.errors import Conflict, Forbidden, InvalidInput, NotFound


def normalise_email(email: str) -> str:
    """Emails compare case-insensitively and without surrounding white space."""
    return email.strip().lower()


def _check_password(password: str) -> None:
    problem = password_problem(password)
    if problem:
        raise InvalidInput(problem, {"field": "password"})


def get_user(session: Session, user_id: int) -> User:
    """The user with ``user_id``; NotFound otherwise."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    return user


def list_users(session: Session) -> list[User]:
    """Every user, oldest first."""
    return list(session.scalars(select(User).order_by(User.id)))


def create_user(
    session: Session, email: str, password: str, role: Role, name: str = "", by: User | None = None
) -> User:
    """Create a user. ``by`` is the acting user; None only for the Owner created at first start."""
    if by is not None and not can_grant(by.role, role):
        raise Forbidden(f"a {by.role} cannot create a user with role {role}")
    _check_password(password)
    user = User(
        email=normalise_email(email),
        name=name,
        role=str(role),
        password_hash=hash_password(password),
        token_version=0,
    )
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict("a user with this email already exists", {"field": "email"}) from None
    return user


def authenticate(session: Session, email: str, password: str) -> User | None:
    """The user if ``password`` is right; None otherwise, in the same time whether or not they exist."""
    user = session.scalar(select(User).where(User.email == normalise_email(email)))
    if not verify_password(user.password_hash if user else None, password):
        return None
    return user


def update_user(
    session: Session,
    by: User,
    user: User,
    *,
    name: str | None = None,
    password: str | None = None,
    role: Role | None = None,
) -> User:
    """Change a user's name, password or role, within what ``by`` may do."""
    if role is not None and role != user.role:
        if by.id == user.id:
            raise Forbidden("nobody can change their own role")
        if not (can_grant(by.role, user.role) and can_grant(by.role, role)):
            raise Forbidden(f"a {by.role} cannot change a {user.role} into a {role}")
        user.role = str(role)
        user.token_version += 1
    if by.id != user.id and not can_grant(by.role, user.role):
        raise Forbidden(f"a {by.role} cannot modify a {user.role}")
    if name is not None:
        user.name = name
    if password is not None:
        _check_password(password)
        user.password_hash = hash_password(password)
        user.token_version += 1
    session.commit()
    return user


def delete_user(session: Session, by: User, user: User) -> None:
    """Delete a user ranked below ``by``; the Owner and oneself cannot be deleted."""
    if by.id == user.id:
        raise Forbidden("you cannot delete yourself")
    if not can_grant(by.role, user.role):
        raise Forbidden(f"a {by.role} cannot delete a {user.role}")
    session.delete(user)
    session.commit()


def owner_exists(session: Session) -> bool:
    """Whether the first-start Owner has been created."""
    count = session.scalar(select(func.count()).select_from(User).where(User.role == Role.owner))
    return bool(count)


def ensure_owner(session: Session, email: str, password: str) -> bool:
    """Create the Owner unless one exists; True if it was created now."""
    if owner_exists(session):
        return False
    try:
        create_user(session, email, password, Role.owner, name="Owner")
    except Conflict:
        # Another replica created it at the same moment.
        return False
    return True
