"""Results store, first schema: studies, nodules, mammography findings, output objects.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_UID = 64


def _study_fk() -> sa.Column:
    return sa.Column("study_instance_uid", sa.String(_UID),
                     sa.ForeignKey("studies.study_instance_uid", ondelete="CASCADE"), primary_key=True)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("study_instance_uid", sa.String(_UID), primary_key=True),
        sa.Column("patient_key", sa.String(128), nullable=True),
        sa.Column("program", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(2), nullable=False),
        sa.Column("priority", sa.String(8), nullable=False),
        sa.Column("priority_rank", sa.SmallInteger, nullable=False),
        sa.Column("study_date", sa.Date, nullable=True),
        sa.Column("arrived_at", sa.DateTime, nullable=False),
        sa.Column("triaged_at", sa.DateTime, nullable=False),
        sa.Column("lung_rads", sa.String(2), nullable=True),
        sa.Column("exam_score", sa.SmallInteger, nullable=True),
        sa.Column("density", sa.String(1), nullable=True),
        sa.Column("malignancy_probability", sa.Float, nullable=True),
        sa.Column("recall", sa.Boolean, nullable=True),
        sa.Column("needs_human_review", sa.Boolean, nullable=False),
        sa.Column("incomplete", sa.Boolean, nullable=False),
        sa.Column("prior_study_instance_uid", sa.String(_UID), nullable=True),
        sa.Column("sr_sop_instance_uid", sa.String(_UID), nullable=True),
        sa.Column("schema_version", sa.String(8), nullable=False),
        sa.Column("event_json", sa.Text, nullable=False),
    )
    op.create_index("ix_studies_patient", "studies", ["patient_key", "modality", "study_date"])
    op.create_index("ix_studies_worklist", "studies", ["priority_rank", "arrived_at"])
    op.create_table(
        "nodules",
        _study_fk(),
        sa.Column("finding_index", sa.Integer, primary_key=True),
        sa.Column("tracking_uid", sa.String(_UID), nullable=False),
        sa.Column("center_x_mm", sa.Float, nullable=False),
        sa.Column("center_y_mm", sa.Float, nullable=False),
        sa.Column("center_z_mm", sa.Float, nullable=False),
        sa.Column("mean_diameter_mm", sa.Float, nullable=False),
        sa.Column("long_axis_mm", sa.Float, nullable=False),
        sa.Column("volume_mm3", sa.Float, nullable=False),
        sa.Column("composition", sa.String(16), nullable=False),
        sa.Column("malignancy_probability", sa.Float, nullable=False),
        sa.Column("lung_rads", sa.String(2), nullable=False),
        sa.Column("prior_tracking_uid", sa.String(_UID), nullable=True),
        sa.Column("diameter_change_mm", sa.Float, nullable=True),
        sa.Column("volume_doubling_time_days", sa.Float, nullable=True),
    )
    op.create_index("ix_nodules_tracking_uid", "nodules", ["tracking_uid"])
    op.create_table(
        "mammo_findings",
        _study_fk(),
        sa.Column("finding_index", sa.Integer, primary_key=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("laterality", sa.String(1), nullable=False),
        sa.Column("view", sa.String(3), nullable=False),
        sa.Column("sop_instance_uid", sa.String(_UID), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("center_row", sa.Integer, nullable=False),
        sa.Column("center_col", sa.Integer, nullable=False),
        sa.Column("bbox_row0", sa.Integer, nullable=False),
        sa.Column("bbox_col0", sa.Integer, nullable=False),
        sa.Column("bbox_row1", sa.Integer, nullable=False),
        sa.Column("bbox_col1", sa.Integer, nullable=False),
    )
    op.create_table(
        "outputs",
        _study_fk(),
        sa.Column("sop_instance_uid", sa.String(_UID), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("series_instance_uid", sa.String(_UID), nullable=True),
        sa.Column("sop_class_uid", sa.String(_UID), nullable=True),
        sa.Column("path", sa.Text, nullable=True),
    )


def downgrade() -> None:
    for table in ("outputs", "mammo_findings", "nodules"):
        op.drop_table(table)
    op.drop_index("ix_studies_worklist", "studies")
    op.drop_index("ix_studies_patient", "studies")
    op.drop_table("studies")
