"""Privacy budgets: epsilon per data scientist per dataset, charged once per released result."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pygrid.auth.roles import Permission, has_permission
from pygrid.data_centric import audit
from pygrid.data_centric.datasets import get_dataset
from pygrid.db.models import Budget, User, utcnow
from pygrid.errors import NotFound

# Float sums of epsilons: a budget of 3 must admit three results of 1.0 exactly.
TOLERANCE = 1e-9


def find_user(session: Session, email: str) -> User:
    """The user with ``email``; NotFound otherwise."""
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no user with email {email!r}")
    return user


def budget_of(session: Session, dataset_id: int, user_id: int) -> Budget | None:
    """The budget row, or None (which means a limit of 0)."""
    return session.scalar(
        select(Budget).where(Budget.dataset_id == dataset_id, Budget.user_id == user_id)
    )


def set_budget(
    session: Session, who: User, dataset_id: int, user_email: str, epsilon: float
) -> Budget:
    """Set (or change) the limit; what was spent stays spent."""
    dataset = get_dataset(session, dataset_id)
    user = find_user(session, user_email)
    budget = budget_of(session, dataset.id, user.id)
    if budget is None:
        budget = Budget(
            dataset_id=dataset.id, user_id=user.id, epsilon_limit=epsilon, epsilon_spent=0.0
        )
        session.add(budget)
    else:
        budget.epsilon_limit = epsilon
        budget.updated_at = utcnow()
    audit.record(
        session, "budget.set", who, dataset_id=dataset.id, user=user.email, epsilon=epsilon
    )
    session.commit()
    return budget


def list_budgets(
    session: Session, who: User, dataset_id: int | None, user_email: str | None
) -> list[tuple[Budget, User]]:
    """Budgets with their users: all for budget managers, the caller's own otherwise."""
    query = select(Budget, User).join(User, User.id == Budget.user_id).order_by(Budget.id)
    if not has_permission(who.role, Permission.manage_budgets):
        query = query.where(Budget.user_id == who.id)
    if dataset_id is not None:
        query = query.where(Budget.dataset_id == dataset_id)
    if user_email is not None:
        query = query.where(User.email == user_email.strip().lower())
    return [(budget, user) for budget, user in session.execute(query).all()]


def charge(session: Session, dataset_id: int, user_id: int, epsilon: float) -> bool:
    """Add ``epsilon`` to the spent amount if it stays within the limit, atomically; in the
    caller's transaction. False (nothing charged) when it would exceed the limit."""
    result = session.execute(
        update(Budget)
        .where(
            Budget.dataset_id == dataset_id,
            Budget.user_id == user_id,
            Budget.epsilon_spent + epsilon <= Budget.epsilon_limit + TOLERANCE,
        )
        .values(epsilon_spent=Budget.epsilon_spent + epsilon, updated_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def remaining(budget: Budget | None) -> float:
    """What is left to spend (0 without a budget)."""
    if budget is None:
        return 0.0
    return max(0.0, budget.epsilon_limit - budget.epsilon_spent)


def budget_json(budget: Budget, user: User) -> dict[str, Any]:
    """A budget as the API shows it."""
    return {
        "dataset_id": budget.dataset_id,
        "user_id": user.id,
        "user_email": user.email,
        "epsilon_limit": budget.epsilon_limit,
        "epsilon_spent": budget.epsilon_spent,
        "epsilon_remaining": remaining(budget),
    }
