"""Alembic environment: runs on the connection that `services.registry.migrate` hands over."""

from alembic import context

from services.registry.models import SQLModel

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=SQLModel.metadata)
with context.begin_transaction():
    context.run_migrations()
