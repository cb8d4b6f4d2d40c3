"""Follow-up fields of TriageEvent 1.2: prior interval and comparison per study, growth per nodule, new
mammography findings.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("prior_interval_days", sa.Integer, nullable=True))
    op.add_column("studies", sa.Column("compared_with_prior", sa.Boolean, nullable=True))
    op.add_column("nodules", sa.Column("volume_change_percent", sa.Float, nullable=True))
    op.add_column("nodules", sa.Column("growing", sa.Boolean, nullable=True))
    op.add_column("mammo_findings", sa.Column("new_since_prior", sa.Boolean, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mammo_findings") as batch:
        batch.drop_column("new_since_prior")
    with op.batch_alter_table("nodules") as batch:
        batch.drop_column("growing")
        batch.drop_column("volume_change_percent")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("compared_with_prior")
        batch.drop_column("prior_interval_days")
