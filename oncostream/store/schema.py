"""The results store's tables (SQLAlchemy Core): one schema for SQLite and PostgreSQL.

This is the schema the code reads and writes; the migrations under ``migrations/versions/`` build it
from empty and must arrive at exactly this (tests/unit/store: the migrated database compared with this
metadata). Times are stored as naive UTC; patients only as ``patient_key`` (a keyed hash computed at
assembly), never a clear identifier.
"""

from __future__ import annotations

from sqlalchemy import (Boolean, Column, Date, DateTime, Float, ForeignKey, Index, Integer, MetaData, SmallInteger,
                        String, Table, Text)

VERSION_TABLE = "oncostream_store_version"  # Alembic's bookkeeping, under a name that cannot clash

metadata = MetaData()

_UID = 64  # DICOM UI values are at most 64 characters

studies = Table(
    "studies", metadata,
    Column("study_instance_uid", String(_UID), primary_key=True),
    Column("patient_key", String(128), nullable=True),
    Column("program", String(64), nullable=False),
    Column("modality", String(2), nullable=False),
    Column("priority", String(8), nullable=False),
    Column("priority_rank", SmallInteger, nullable=False),  # 0 = URGENT ... 3 = LOW: the worklist's order
    Column("study_date", Date, nullable=True),
    Column("arrived_at", DateTime, nullable=False),
    Column("triaged_at", DateTime, nullable=False),
    Column("lung_rads", String(2), nullable=True),  # CT
    Column("exam_score", SmallInteger, nullable=True),  # MG, 1-10
    Column("density", String(1), nullable=True),  # MG, BI-RADS a-d
    Column("malignancy_probability", Float, nullable=True),  # MG exam probability
    Column("recall", Boolean, nullable=True),  # MG
    Column("needs_human_review", Boolean, nullable=False),
    Column("incomplete", Boolean, nullable=False),
    Column("prior_study_instance_uid", String(_UID), nullable=True),
    Column("prior_interval_days", Integer, nullable=True),
    Column("compared_with_prior", Boolean, nullable=True),  # the follow-up rules applied (a prior was found)
    Column("sr_sop_instance_uid", String(_UID), nullable=True),
    Column("schema_version", String(8), nullable=False),
    Column("event_json", Text, nullable=False),  # the TriageEvent as published, identifiers removed unless allowed
)
Index("ix_studies_patient", studies.c.patient_key, studies.c.modality, studies.c.study_date)
Index("ix_studies_worklist", studies.c.priority_rank, studies.c.arrived_at)

nodules = Table(
    "nodules", metadata,
    Column("study_instance_uid", String(_UID), ForeignKey("studies.study_instance_uid", ondelete="CASCADE"),
           primary_key=True),
    Column("finding_index", Integer, primary_key=True),  # position in the event's findings
    Column("tracking_uid", String(_UID), nullable=False),
    Column("center_x_mm", Float, nullable=False),
    Column("center_y_mm", Float, nullable=False),
    Column("center_z_mm", Float, nullable=False),
    Column("mean_diameter_mm", Float, nullable=False),
    Column("long_axis_mm", Float, nullable=False),
    Column("volume_mm3", Float, nullable=False),
    Column("composition", String(16), nullable=False),
    Column("malignancy_probability", Float, nullable=False),
    Column("lung_rads", String(2), nullable=False),
    Column("prior_tracking_uid", String(_UID), nullable=True),
    Column("diameter_change_mm", Float, nullable=True),
    Column("volume_doubling_time_days", Float, nullable=True),
    Column("volume_change_percent", Float, nullable=True),
    Column("growing", Boolean, nullable=True),  # Lung-RADS v2022 growth
)
Index("ix_nodules_tracking_uid", nodules.c.tracking_uid)

mammo_findings = Table(
    "mammo_findings", metadata,
    Column("study_instance_uid", String(_UID), ForeignKey("studies.study_instance_uid", ondelete="CASCADE"),
           primary_key=True),
    Column("finding_index", Integer, primary_key=True),
    Column("type", String(16), nullable=False),
    Column("laterality", String(1), nullable=False),
    Column("view", String(3), nullable=False),
    Column("sop_instance_uid", String(_UID), nullable=False),
    Column("score", Float, nullable=False),
    Column("center_row", Integer, nullable=False),
    Column("center_col", Integer, nullable=False),
    Column("bbox_row0", Integer, nullable=False),
    Column("bbox_col0", Integer, nullable=False),
    Column("bbox_row1", Integer, nullable=False),
    Column("bbox_col1", Integer, nullable=False),
    Column("new_since_prior", Boolean, nullable=True),
)

outputs = Table(
    "outputs", metadata,
    Column("study_instance_uid", String(_UID), ForeignKey("studies.study_instance_uid", ondelete="CASCADE"),
           primary_key=True),
    Column("sop_instance_uid", String(_UID), primary_key=True),
    Column("kind", String(8), nullable=False),  # SR | SEG | SC (secondary capture, e.g. a heatmap)
    Column("series_instance_uid", String(_UID), nullable=True),
    Column("sop_class_uid", String(_UID), nullable=True),
    Column("path", Text, nullable=True),  # where a file sink wrote it, when the store was told
)

# LDCT detections below the detector's operating point, never reported: what a later round looks back at
# when it finds a nodule this study's read did not report (postprocess/followup.py). The primary key,
# led by the study, is the index a prior lookup reads them by.
lookback_candidates = Table(
    "lookback_candidates", metadata,
    Column("study_instance_uid", String(_UID), ForeignKey("studies.study_instance_uid", ondelete="CASCADE"),
           primary_key=True),
    Column("candidate_index", Integer, primary_key=True),  # highest detection score first
    Column("center_x_mm", Float, nullable=False),
    Column("center_y_mm", Float, nullable=False),
    Column("center_z_mm", Float, nullable=False),
    Column("mean_diameter_mm", Float, nullable=False),
    Column("volume_mm3", Float, nullable=False),
    Column("detection_score", Float, nullable=False),
)

CHILD_TABLES = (nodules, mammo_findings, outputs, lookback_candidates)
