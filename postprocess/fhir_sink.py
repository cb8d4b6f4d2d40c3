"""FHIR sink: each triaged study as a FHIR R4 transaction Bundle (postprocess/fhir.py), POSTed to the
server base URL ``settings.fhir_url`` (http://hl7.org/fhir/R4/http.html#transaction).

add() renders and validates (no network); flush() posts each queued Bundle. Connection errors, timeouts,
408/429/5xx leave the study queued and raise a transient SinkError (the lifecycle retries with backoff);
any other refusal (4xx: the server rejects the content) is permanent for that study, which is dropped so
later studies flow. Replays are harmless: every entry is a conditional update on identifiers derived from
the output UIDs. Findings are health data even without identifiers, so plain http is accepted only to
loopback. A delivery sink like the PACS: studies are announced triaged only once the server has them.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlparse

import requests

from oncostream.errors import InsecureTransport
from oncostream.study import StudyResult
from oncostream.transport_security import is_loopback_host
from postprocess.base import Sink
from postprocess.errors import SinkError
from postprocess.fhir import FHIR_JSON, FhirRenderingError, render_bundle

log = logging.getLogger(__name__)

_RETRY_HTTP = {408, 429, 500, 502, 503, 504}


class FhirSink(Sink):
    name = "fhir"

    def __init__(self, base_url: str, timeout_s: float = 30.0, session: requests.Session | None = None):
        if not isinstance(base_url, str) or not base_url:
            raise TypeError("base_url: want the FHIR server's base URL, e.g. https://fhir.example.org/r4")
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"base_url: want an http(s) URL, got {base_url!r}")
        if parsed.scheme == "http" and not is_loopback_host(parsed.hostname):
            raise InsecureTransport("fhir_url", f"triage results go only over https (or plain http to loopback), "
                                                f"not to http://{parsed.hostname}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s: want a positive number of seconds, got {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = session or requests.Session()
        self._pending: dict[str, dict] = {}
        self._lock = threading.Lock()

    def add(self, result: StudyResult) -> None:
        uid = result.event.study_instance_uid
        try:
            bundle = render_bundle(result.event)
        except FhirRenderingError as exc:
            raise SinkError(self.name, str(exc), permanent=True, studies=(uid,)) from exc
        with self._lock:
            self._pending[uid] = bundle

    def flush(self, timeout_s: float = 60.0) -> None:
        with self._lock:
            for uid, bundle in list(self._pending.items()):
                self._post(uid, bundle)
                del self._pending[uid]

    def _post(self, uid: str, bundle: dict) -> None:
        try:
            response = self._session.post(self.base_url, json=bundle, timeout=self.timeout_s,
                                          headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
        except requests.RequestException as exc:
            raise SinkError(self.name, f"cannot reach {self.base_url}: {type(exc).__name__}",
                            studies=(uid,)) from exc
        if response.status_code in _RETRY_HTTP:
            raise SinkError(self.name, f"{self.base_url} answered HTTP {response.status_code}", studies=(uid,))
        if not 200 <= response.status_code < 300:
            self._pending.pop(uid, None)
            raise SinkError(self.name, f"{self.base_url} refused the bundle: HTTP {response.status_code} "
                                       f"{_outcome(response)}", permanent=True, studies=(uid,))
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if answer.get("resourceType") != "Bundle" or answer.get("type") != "transaction-response":
            self._pending.pop(uid, None)
            raise SinkError(self.name, f"{self.base_url} answered HTTP {response.status_code} without a "
                                       "transaction-response Bundle (is it a FHIR server's base URL?)",
                            permanent=True, studies=(uid,))

    def discard(self, study_instance_uid: str) -> None:
        with self._lock:
            self._pending.pop(study_instance_uid, None)

    def close(self) -> None:
        self._session.close()


def _outcome(response: requests.Response) -> str:
    """The diagnostics of an OperationOutcome answer, else the start of the body."""
    try:
        outcome = response.json()
        issues = outcome.get("issue", []) if outcome.get("resourceType") == "OperationOutcome" else []
        text = "; ".join(i.get("diagnostics") or i.get("details", {}).get("text", "") for i in issues)
        return text[:300] if text else response.text[:200]
    except ValueError:
        return response.text[:200]
