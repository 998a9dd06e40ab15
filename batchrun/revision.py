"""The schema revision this code expects: the newest migration in migrations/versions (a test keeps the
two in step). A module of its own so that `view` can check it without importing SQLAlchemy."""

SCHEMA_REVISION = "0008"
