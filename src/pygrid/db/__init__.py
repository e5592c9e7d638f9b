"""Database: SQLAlchemy 2 models, engine creation, Alembic migrations.

SQLite (the embedded default) and PostgreSQL (``DATABASE_URL``) are both first-class.
"""
