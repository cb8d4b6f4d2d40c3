"""One error root for the whole system; subclasses carry what a caller needs."""

from __future__ import annotations


class OncostreamError(Exception):
    """Root of every error oncostream raises on purpose."""


class RejectedInstance(OncostreamError):
    """One DICOM instance cannot be processed; it goes to the dead-letter topic.

    ``reason`` is a short machine-friendly code (``truncated``, ``not_dicom``,
    ``missing_pixel_data``, ``short_pixel_data``, ``unknown_sop_class``, ``oversize``,
    ``undecodable``, ``invalid_uid``, ``invalid_geometry``, ``geometry_above_limit``,
    ``too_many_elements``, ``claim_check_refused``, ...); ``detail`` is the human sentence.
    """

    def __init__(self, reason: str, detail: str, sop_instance_uid: str | None = None):
        self.reason = reason
        self.detail = detail
        self.sop_instance_uid = sop_instance_uid
        super().__init__(f"{reason}: {detail}")


class NotScreened(RejectedInstance):
    """A valid object the screening pipelines do not read, that modalities send along with the images
    (a dose report, a secondary capture, a presentation state, our own SR/SEG coming back): acknowledged
    and ignored, never dead-lettered, so that the dead-letter topic holds only what went wrong."""

    def __init__(self, detail: str, sop_instance_uid: str | None = None):
        super().__init__("not_screened", detail, sop_instance_uid)


class UnsupportedTransferSyntax(RejectedInstance):
    """No available decoder reproduces this transfer syntax; ``failures`` lists why each failed."""

    def __init__(self, transfer_syntax_uid: str, name: str, failures: dict[str, str],
                 sop_instance_uid: str | None = None):
        self.transfer_syntax_uid = transfer_syntax_uid
        self.failures = failures
        tried = "; ".join(f"{k}: {v}" for k, v in failures.items()) or "no decoder available"
        super().__init__("undecodable", f"cannot decode transfer syntax {name} ({transfer_syntax_uid}): {tried}",
                         sop_instance_uid)


class ProcessFault(OncostreamError):
    """This process could not read an instance for a reason of its own, not of the instance (a module
    import failing or deadlocking between threads, memory running out, a decoder's dependency
    missing): the instance is read again later (the worker stops without committing past it, the
    gateway answers "out of resources"), never dead-lettered."""

    @classmethod
    def of(cls, exc: BaseException) -> ProcessFault | None:
        """The fault an exception raised while reading an instance stands for, or None when the
        exception comes from the instance's bytes. pydicom reports malformed values with ValueError,
        TypeError, KeyError and their kin, an unknown VR with NotImplementedError and deep nesting with
        RecursionError (both RuntimeErrors); an ImportError, MemoryError or other RuntimeError says
        nothing about the bytes."""
        if isinstance(exc, (ImportError, MemoryError)) or (
                isinstance(exc, RuntimeError) and not isinstance(exc, (RecursionError, NotImplementedError))):
            return cls(f"cannot read an instance in this process: {type(exc).__name__}: {exc}")
        return None


class BackendUnavailable(OncostreamError):
    """The inference backend cannot serve now; callers pause and retry after ``retry_after`` s."""

    def __init__(self, detail: str, retry_after: float = 5.0):
        self.retry_after = retry_after
        super().__init__(detail)


class ContractMismatch(OncostreamError):
    """A served or loaded model does not match its model card; ``differences`` says how."""

    def __init__(self, model: str, differences: list[str]):
        self.model = model
        self.differences = differences
        super().__init__(f"model {model!r} does not match its card: " + "; ".join(differences))


class StudyFailed(OncostreamError):
    """An assembled study could not be processed (bad geometry, model error). It fails alone:
    the run records it and carries on; the worker dead-letters its instances with ``reason``."""

    def __init__(self, reason: str, detail: str, study_instance_uid: str):
        self.reason = reason
        self.detail = detail
        self.study_instance_uid = study_instance_uid
        super().__init__(f"{reason}: {detail}")


class DeadLetterUnavailable(OncostreamError):
    """The dead-letter sink (DLQ topic, rejection log) did not durably take a record: nothing it covers
    may be acknowledged until it does."""


class ClaimStoreUnavailable(OncostreamError):
    """The claim store cannot be reached or refuses this service (network, 5xx, credentials): no claim
    check is judged on it. Writers fail the produce; the worker stops without committing past the
    instance, which is read again when it restarts."""


class InsecureTransport(OncostreamError, ValueError):
    """A configuration would send credentials or patient data in clear to a host other than loopback;
    ``argument`` names the setting or constructor argument to change."""

    def __init__(self, argument: str, detail: str):
        self.argument = argument
        super().__init__(f"{argument}: {detail}")


class KafkaUnreachable(OncostreamError):
    """A Kafka client could not connect to ``bootstrap``; ``cause`` says why when it can be told (the
    TLS handshake, the client certificate, SASL), with the setting to look at."""

    def __init__(self, bootstrap: str, security_protocol: str, cause: str):
        self.bootstrap = bootstrap
        self.security_protocol = security_protocol
        self.cause = cause
        super().__init__(f"cannot connect to Kafka at {bootstrap} over {security_protocol}: {cause}")
