"""Look-back candidates: each LDCT study's detections below the detector's operating point (never reported),
which a later round looks back at when it finds a nodule the study's read did not report.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_UID = 64


def upgrade() -> None:
    op.create_table(
        "lookback_candidates",
        sa.Column("study_instance_uid", sa.String(_UID),
                  sa.ForeignKey("studies.study_instance_uid", ondelete="CASCADE"), primary_key=True),
        sa.Column("candidate_index", sa.Integer, primary_key=True),
        sa.Column("center_x_mm", sa.Float, nullable=False),
        sa.Column("center_y_mm", sa.Float, nullable=False),
        sa.Column("center_z_mm", sa.Float, nullable=False),
        sa.Column("mean_diameter_mm", sa.Float, nullable=False),
        sa.Column("volume_mm3", sa.Float, nullable=False),
        sa.Column("detection_score", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("lookback_candidates")
