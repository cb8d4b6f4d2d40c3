"""One typed, frozen settings object (env prefix ONCOSTREAM_), passed down to every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "model_repository"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ONCOSTREAM_", frozen=True, extra="ignore")

    program: str = "default"
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    backend: Literal["embedded", "triton"] = "embedded"
    triton_url: str | None = None  # HOST:PORT of Triton's gRPC endpoint
    triton_shared_memory: Literal["auto", "system", "none"] = "auto"
    triton_timeout_s: float = 60.0

    # ingest
    max_instance_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    assembly_timeout_s: float = Field(default=30.0, gt=0)  # quiet time before an incomplete study closes
    max_in_flight_studies: int = Field(default=8, gt=0)
    # assembly bounds: past a cap the oldest pending study closes early, marked incomplete (RELIABILITY.md)
    max_pending_studies: int = Field(default=64, gt=0)
    max_pending_bytes: int = Field(default=4 * 1024 * 1024 * 1024, gt=0)
    max_study_age_s: float = Field(default=1800.0, gt=0)  # since a study's first instance, resends or not
    finished_memory: int = Field(default=10_000, gt=0)  # finished studies whose late instances are ignored
    finished_memory_s: float = Field(default=24 * 3600.0, gt=0)

    # failure policy (oncostream.app.lifecycle): retry with exponential backoff
    retry_initial_s: float = Field(default=1.0, ge=0)
    retry_max_s: float = Field(default=60.0, ge=0)
    delivery_attempts: int = Field(default=5, gt=0)  # transient sink failures before a study is dead-lettered
    # what one instance may declare; parse_instance refuses more before any decoder allocates it
    max_image_dimension: int = Field(default=16384, gt=0)  # Rows and Columns
    max_frames: int = Field(default=1024, gt=0)  # NumberOfFrames
    max_decoded_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)  # Rows×Columns×frames×samples×bytes
    max_elements: int = Field(default=100_000, gt=0)  # data elements, those in sequences included

    # listeners bind loopback unless a deployment opts in to more
    metrics_host: str = "127.0.0.1"

    # kafka
    kafka_bootstrap: str | None = None
    topic_dicom: str = "oncostream.dicom"
    topic_triage: str = "oncostream.triage"
    topic_results: str = "oncostream.results"
    topic_dlq: str = "oncostream.dlq"
    consumer_group: str = "oncostream-workers"
    inline_limit_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    # claim-checked objects: written 0600 into this directory (created 0700), read back only from it,
    # deleted once their study is committed or when older than claim_check_max_age_s
    claim_check_dir: Path = Path(".oncostream/claims")
    claim_check_max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)

    # outputs
    allow_patient_identifiers: bool = False
    pacs_address: str | None = None  # HOST:PORT of a C-STORE SCP that receives every SR/SEG
    pacs_called_ae: str = "ANY-SCP"
    stow_rs_url: str | None = None  # DICOMweb root (e.g. http://pacs/dicom-web) for STOW-RS delivery
    stow_rs_username: str | None = None
    stow_rs_password: SecretStr | None = None
