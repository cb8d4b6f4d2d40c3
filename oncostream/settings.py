"""One typed, frozen settings object (env prefix ONCOSTREAM_), passed down to every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
# Shipped data (model repository, TriageEvent schema): in an installed wheel under oncostream/_data/
# (setup.py copies it there), in a checkout or an editable install at the checkout's top level.
_PACKAGED_DATA = Path(__file__).resolve().parent / "_data"
DATA_ROOT = _PACKAGED_DATA if (_PACKAGED_DATA / "model_repository").is_dir() else REPO_ROOT
DEFAULT_MODEL_REPOSITORY = DATA_ROOT / "model_repository"
TRIAGE_EVENT_SCHEMA = DATA_ROOT / "docs" / "triage_event.schema.json"


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
    # assembled studies decoded, inferred and post-processed at once, each on a thread, while the source
    # keeps reading (oncostream.app.lifecycle.ConcurrentStudies); perf/RESULTS.md has the measurement
    max_studies_processing: int = Field(default=2, gt=0)
    # pixels (float32, from the headers) the studies processing at once may hold between them: a study that
    # does not fit waits (one larger than this runs alone); 0: no budget. 256 MiB holds one full-size LDCT
    # series and a mammography exam, never two series (perf/RESULTS.md, "a 2 GB folder")
    max_processing_pixel_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    # embedded backend, ONNX Runtime intra-op threads per model run: N > 0 = N threads per run, cores // N
    # runs side by side (the studies processing at once, and one series' independent batches; cores: the
    # affinity capped by a container's CPU quota, oncostream/cpus.py); 0 = ONNX Runtime's default (the
    # host's physical cores), one model run at a time (perf/RESULTS.md compares both)
    ort_threads: int = Field(default=1, ge=0)
    # raw records of unfinished studies the worker keeps in memory for their dead-letter records; past this
    # they wait in the claim-check store (oncostream.app.worker.HeldMessages)
    max_held_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    # assembly bounds: past a cap the oldest pending study closes early, marked incomplete (RELIABILITY.md)
    max_pending_studies: int = Field(default=64, gt=0)
    max_pending_bytes: int = Field(default=4 * 1024 * 1024 * 1024, gt=0)
    max_study_age_s: float = Field(default=1800.0, gt=0)  # since a study's first instance, resends or not
    finished_memory: int = Field(default=10_000, gt=0)  # finished studies whose late instances are ignored
    finished_memory_s: float = Field(default=24 * 3600.0, gt=0)

    # failure policy (oncostream.app.lifecycle): retry with exponential backoff
    retry_initial_s: float = Field(default=1.0, ge=0)
    retry_max_s: float = Field(default=60.0, ge=0)
    # transient sink failures before a study is dead-lettered: 36 attempts with the backoff above are
    # about 30 min, so a PACS restart or short maintenance pauses the worker (Kafka keeps every study)
    # instead of dead-lettering each study in flight; a PACS gone for longer costs one study per 30 min
    delivery_attempts: int = Field(default=36, gt=0)
    # what one instance may declare; parse_instance refuses more before any decoder allocates it
    max_image_dimension: int = Field(default=16384, gt=0)  # Rows and Columns
    max_frames: int = Field(default=1024, gt=0)  # NumberOfFrames
    max_decoded_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)  # Rows×Columns×frames×samples×bytes
    max_elements: int = Field(default=100_000, gt=0)  # data elements, those in sequences included

    # listeners bind loopback unless a deployment opts in to more
    metrics_host: str = "127.0.0.1"
    # optional DICOM TLS on the gateway (PS3.15 B.1): server certificate + key (PEM); with
    # dicom_tls_require_client_cert only callers with a certificate from dicom_tls_cafile associate
    dicom_tls_certfile: Path | None = None
    dicom_tls_keyfile: Path | None = None
    dicom_tls_cafile: Path | None = None
    dicom_tls_require_client_cert: bool = False

    # kafka
    kafka_bootstrap: str | None = None
    topic_dicom: str = "oncostream.dicom"
    topic_triage: str = "oncostream.triage"
    topic_results: str = "oncostream.results"
    topic_dlq: str = "oncostream.dlq"
    consumer_group: str = "oncostream-workers"
    # transport security of every Kafka client (oncostream.transport_security.kafka_client_security):
    # SSL = TLS (+ a client certificate for mTLS), SASL_SSL = TLS + SASL credentials; never SASL in clear
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = "PLAINTEXT"
    kafka_ssl_cafile: Path | None = None  # PEM CA bundle the broker's certificate must chain to
    kafka_ssl_certfile: Path | None = None  # PEM client certificate (mTLS), with kafka_ssl_keyfile
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    inline_limit_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    # claim-checked objects: written 0600 into this directory (created 0700), read back only from it,
    # deleted once their study is committed or when older than claim_check_max_age_s
    claim_check_dir: Path = Path(".oncostream/claims")
    claim_check_max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # s3://bucket/prefix: claim checks in S3-compatible object storage that several pods share, instead
    # of claim_check_dir (oncostream.claim_store.S3ClaimStore); credentials unset: boto3's default chain
    claim_check_url: str | None = None
    claim_check_s3_endpoint_url: str | None = None  # e.g. https://s3.example.org; unset: AWS
    claim_check_s3_region: str = "us-east-1"
    claim_check_s3_access_key_id: SecretStr | None = None
    claim_check_s3_secret_access_key: SecretStr | None = None

    # screening rounds: the program's secret for patient pseudonyms (oncostream.ids.patient_pseudonym,
    # HMAC-SHA256 of IssuerOfPatientID + PatientID). Unset: studies are not linked to earlier rounds
    # in the results store (assembly warns once); the PACS query for priors still works.
    pseudonym_key: SecretStr | None = None
    # when the results store knows no prior exam, ask the PACS at pacs_address (C-FIND by PatientID, C-GET
    # of the prior's oncostream SR; oncostream.app.priors); off by default: it needs Q/R rights there
    prior_query_pacs: bool = False
    # results store (oncostream.store): SQLAlchemy URL, sqlite:///FILE (embedded, relative to the working
    # directory) or postgresql://USER@HOST:PORT/DB (password from libpq's PGPASSFILE / PGPASSWORD, not the URL)
    store_url: str = "sqlite:///.oncostream/results.db"
    # FHIR R4 server base URL: every triage event is POSTed there as a transaction Bundle; unset: off
    fhir_url: str | None = None

    # outputs
    allow_patient_identifiers: bool = False
    pacs_address: str | None = None  # HOST:PORT of a C-STORE SCP that receives every SR/SEG
    pacs_called_ae: str = "ANY-SCP"
    stow_rs_url: str | None = None  # DICOMweb root (e.g. http://pacs/dicom-web) for STOW-RS delivery
    stow_rs_username: str | None = None
    stow_rs_password: SecretStr | None = None

    @model_validator(mode="after")
    def _transport_settings_go_together(self) -> Settings:
        if self.kafka_security_protocol == "SASL_SSL" and (not self.kafka_sasl_username
                                                            or self.kafka_sasl_password is None):
            raise ValueError("kafka_sasl_username and kafka_sasl_password are required with SASL_SSL")
        if self.kafka_security_protocol == "PLAINTEXT" and (self.kafka_sasl_username
                                                             or self.kafka_sasl_password is not None):
            raise ValueError("kafka_sasl_username/password: SASL credentials need kafka_security_protocol "
                             "SASL_SSL (they are never sent in clear)")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together")
        if (self.dicom_tls_certfile is None) != (self.dicom_tls_keyfile is None):
            raise ValueError("dicom_tls_certfile and dicom_tls_keyfile go together")
        if self.dicom_tls_require_client_cert and (self.dicom_tls_certfile is None or self.dicom_tls_cafile is None):
            raise ValueError("dicom_tls_require_client_cert needs dicom_tls_certfile/keyfile and dicom_tls_cafile")
        if (self.claim_check_s3_access_key_id is None) != (self.claim_check_s3_secret_access_key is None):
            raise ValueError("claim_check_s3_access_key_id and claim_check_s3_secret_access_key go together")
        if self.pseudonym_key is not None and len(self.pseudonym_key.get_secret_value().encode()) < 16:
            raise ValueError("pseudonym_key: at least 16 bytes (a short secret can be found by trying them all)")
        return self
