"""Composition of one study's processing: assembled study -> backend -> postprocess (a StudyResult)."""

from __future__ import annotations

import logging
import threading

from oncostream import metrics
from oncostream.errors import BackendUnavailable, OncostreamError, StudyFailed
from oncostream.ids import loggable_uid
from oncostream.settings import Settings
from oncostream.study import Study, StudyResult

log = logging.getLogger(__name__)


def make_backend(settings: Settings):
    """The configured InferenceBackend: embedded (default) or Triton over gRPC."""
    if settings.backend == "triton":
        from ingest.backends.triton import TritonBackend

        return TritonBackend(settings)
    from ingest.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(settings.model_repository, intra_op_threads=settings.ort_threads)


def delivery_sinks(settings: Settings, files_dir=None) -> list:
    """Sinks every command adds to its own: PACS delivery configured in the settings (C-STORE SCU and/or
    DICOMweb STOW-RS), a FHIR server (``settings.fhir_url``) and the results store (``settings.store_url``,
    always). ``files_dir``: where the command's FileSink writes, so the store records each output's path."""
    from oncostream.store import open_store
    from postprocess.store_sink import StoreSink

    sinks = []
    if settings.pacs_address:
        from postprocess.pacs_sink import PacsSink

        sinks.append(PacsSink.from_address(settings.pacs_address, called_ae=settings.pacs_called_ae))
    if settings.stow_rs_url:
        from postprocess.stow_sink import StowRsSink

        password = settings.stow_rs_password.get_secret_value() if settings.stow_rs_password else None
        sinks.append(StowRsSink(settings.stow_rs_url, username=settings.stow_rs_username, password=password))
    if settings.fhir_url:
        from postprocess.fhir_sink import FhirSink

        sinks.append(FhirSink(settings.fhir_url))
    store = open_store(settings.store_url, allow_patient_identifiers=settings.allow_patient_identifiers)
    sinks.append(StoreSink(store, files_dir=files_dir))
    return sinks


def _lung_centroid(study: Study):
    """The series' lung-field centroid (what a later round aligns to); None when it cannot be measured."""
    from ingest.lung_field import lung_centroid_mm

    try:
        return lung_centroid_mm(study.datasets)
    except Exception as exc:  # noqa: BLE001 - without it a later round matches unaligned (and says so)
        log.warning("no lung-field centroid for study %s: %s: %s", loggable_uid(study.study_instance_uid),
                    type(exc).__name__, exc)
        return None


def _import_processing_modules() -> None:
    """Import, on the constructing thread, every module ``process`` and the libraries under it import lazily.
    ``process`` runs on several threads while the owning thread parses the next instances: two threads
    importing one module at once can meet Python's import-lock deadlock detection (seen as a
    ``_DeadlockError`` from ``pydicom.sr.coding`` while an instance was being read, which rejected it)."""
    import highdicom.seg  # noqa: F401
    import highdicom.sr  # noqa: F401
    import pydicom.sr.codedict  # noqa: F401
    import pydicom.sr.coding  # noqa: F401

    import ingest.ldct  # noqa: F401
    import ingest.mammo  # noqa: F401
    import postprocess.results  # noqa: F401


def _load_standard_tables() -> None:
    """Load highdicom's tables of the standard (which modules each IOD has, which attributes each
    module has) now: highdicom reads them, ~0.5 s of JSON, when the first SR or SEG of the process is
    built, which would otherwise land on the first study's latency. A warm-up only: a highdicom that no
    longer has these functions loads its tables as before, on first use."""
    try:
        from highdicom import _standard_utils
    except ImportError:
        return
    for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        load = getattr(_standard_utils, name, None)
        if callable(load):
            load()


class Pipeline:
    """Processes one assembled study at a time; a failing study raises StudyFailed and fails alone."""

    def __init__(self, settings: Settings, backend, prior_lookup=None):
        """``prior_lookup`` (oncostream.app.priors.PriorLookup) finds each study's prior exam; None: the one
        the settings configure (results store; the PACS at ``pacs_address`` with ``prior_query_pacs``), opened on the
        first study. ``False`` turns the comparison with priors off (every study read as a baseline)."""
        self.settings = settings
        self.backend = backend
        self._prior_lookup = prior_lookup
        self._prior_lookup_lock = threading.Lock()
        _import_processing_modules()
        _load_standard_tables()

    def _priors(self):
        if self._prior_lookup is None:
            with self._prior_lookup_lock:
                if self._prior_lookup is None:
                    from oncostream.app.priors import prior_lookup

                    wanted = (getattr(self.settings, "pseudonym_key", None) is not None
                              or getattr(self.settings, "prior_query_pacs", False))
                    try:
                        # without a pseudonym key no study has a patient key to ask the store with
                        self._prior_lookup = prior_lookup(self.settings) if wanted else False
                    except Exception as exc:  # noqa: BLE001 - no store reachable: studies are read as baselines
                        log.warning("prior lookup unavailable (%s: %s): studies are read without priors",
                                    type(exc).__name__, exc)
                        self._prior_lookup = False
        return self._prior_lookup or None

    def process(self, study: Study) -> StudyResult:
        from postprocess.results import build_result

        kind = "ldct" if study.modality == "CT" else "mammo"
        metrics.observe_assembly_wait(study)
        try:
            with metrics.timed(metrics.INFERENCE_SECONDS, model=f"{kind}_screening"), \
                    metrics.stage("inference", study.modality):
                if study.modality == "CT":
                    from ingest.ldct import infer_ldct_study

                    inference = infer_ldct_study(self.backend, study)
                else:
                    from ingest.mammo import infer_mammo_study

                    inference = infer_mammo_study(self.backend, study, repository=self.settings.model_repository)
            prior, lookup_problem = None, None
            lookup = self._priors()
            if lookup is not None:
                prior, lookup_problem = lookup.find(study)
            if lookup_problem:
                inference.review_reasons.append(lookup_problem)
            with metrics.stage("postprocess", study.modality):
                lung_centroid = None
                if study.modality == "CT":
                    lung_centroid = _lung_centroid(study)
                return build_result(study, inference, self.settings, prior=prior, lung_centroid_mm=lung_centroid)
        except (BackendUnavailable, StudyFailed):
            raise
        except OncostreamError as exc:
            raise StudyFailed("processing_failed", str(exc), study.study_instance_uid) from exc
        except Exception as exc:  # noqa: BLE001 - one study's failure must not stop the others
            log.exception("a %s study failed in processing", study.modality)
            raise StudyFailed("processing_failed", f"{type(exc).__name__}: {exc}", study.study_instance_uid) from exc
