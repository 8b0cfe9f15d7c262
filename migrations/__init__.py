"""Alembic migrations, installed as harvester.migrations."""
