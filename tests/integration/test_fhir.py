"""FHIR R4 rendering of triage events and the sink that posts them as transaction Bundles.

No FHIR server can be started here: HAPI FHIR's runnable server (hapi-fhir-cli run-server, the JPA
starter) is not among the Maven packages this machine can fetch. The sink is therefore tested against
a small receiver in this module that does what a server does with a transaction: parses the Bundle with
fhir.resources' R4B models, applies each conditional update by identifier, and answers with a
transaction-response Bundle (or the HTTP errors the tests ask for)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from oncostream.errors import InsecureTransport
from oncostream.settings import Settings
from postprocess import codes
from postprocess.errors import SinkError
from postprocess.fhir import FhirRenderingError, render_bundle, validate_bundle
from postprocess.fhir_sink import FhirSink
from tests import store_cases as cases


class _Receiver:
    """A FHIR transaction endpoint at ``url``: ``resources`` maps (type, identifier) to the stored resource."""

    def __init__(self):
        self.resources: dict[tuple[str, str], dict] = {}
        self.transactions = 0
        self.answers: list[int] = []  # status codes to answer instead of processing, first first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                from fhir.resources.R4B.bundle import Bundle

                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.answers:
                    status = receiver.answers.pop(0)
                    outcome = {"resourceType": "OperationOutcome",
                               "issue": [{"severity": "error", "code": "invalid", "diagnostics": "refused by test"}]}
                    return self._answer(status, outcome)
                assert self.headers["Content-Type"] == "application/fhir+json"
                bundle = Bundle.model_validate_json(body)  # what a server parses first
                assert bundle.type == "transaction"
                entries = []
                for entry in bundle.entry:
                    kind, _, query = entry.request.url.partition("?identifier=")
                    assert entry.request.method == "PUT" and kind == entry.resource.get_resource_type()
                    key = (kind, query)
                    entries.append({"response": {"status": "200 OK" if key in receiver.resources else "201 Created"}})
                    receiver.resources[key] = json.loads(entry.resource.model_dump_json())
                receiver.transactions += 1
                self._answer(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries})

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/fhir"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def receiver():
    server = _Receiver()
    yield server
    server.close()


def _by_code(bundle: dict) -> dict[str, dict]:
    return {e["resource"]["code"]["coding"][0]["code"]: e["resource"] for e in bundle["entry"]}


def test_ldct_follow_up_rendering() -> None:
    event = cases.ct_result("1.2.826.0.7.1", lung_rads="4B", priority="URGENT", prior="1.2.826.0.7.0").event
    bundle = render_bundle(event)
    assert render_bundle(event) == bundle  # deterministic: a replay updates the same resources
    report = bundle["entry"][0]["resource"]
    assert (report["resourceType"], report["status"]) == ("DiagnosticReport", "preliminary")
    assert report["identifier"] == [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.7.1.901"}]
    assert report["imagingStudy"][0]["identifier"]["value"] == "urn:oid:1.2.826.0.7.1"
    full_urls = [e["fullUrl"] for e in bundle["entry"][1:]]
    assert [r["reference"] for r in report["result"]] == full_urls  # every result is in the transaction
    assert "compared with prior study 1.2.826.0.7.0" in report["conclusion"]
    assert "subject" not in report  # no patient without the program's permission
    observations = _by_code(bundle)
    assert observations["TRIAGEPRIORITY"]["valueCodeableConcept"]["text"] == "URGENT"
    assert observations["LUNGRADS"]["valueCodeableConcept"]["coding"][0]["code"] == "LR4B"
    nodules = [e["resource"] for e in bundle["entry"]
               if e["resource"]["code"]["coding"][0]["code"] == codes.NODULE.value]
    assert len(nodules) == 2
    assert nodules[0]["identifier"][1] == {"system": "urn:dicom:uid", "value": "urn:oid:2.25.9000"}  # tracking UID
    components = {c["code"]["coding"][0]["code"]: c for c in nodules[0]["component"]}
    assert components["DIAMCHANGE"]["valueQuantity"] == {"value": 2.0, "unit": "millimeter",
                                                         "system": "http://unitsofmeasure.org", "code": "mm"}
    assert components["VDT"]["valueQuantity"]["code"] == "d"
    assert components["INTERVALCHANGE"]["valueCodeableConcept"]["coding"][0]["code"] == "GROWING"
    second = {c["code"]["coding"][0]["code"]: c for c in nodules[1]["component"]}
    assert second["INTERVALCHANGE"]["valueCodeableConcept"]["coding"][0]["code"] == "NEWNODULE"
    assert "DIAMCHANGE" not in second
    text = json.dumps(bundle)
    for identifier in cases.IDENTIFIERS:
        assert identifier not in text


def test_mammography_rendering_and_identifiers_when_allowed() -> None:
    event = cases.mg_result("1.2.826.0.7.2", exam_score=9, priority="URGENT").event
    observations = _by_code(render_bundle(event))
    assert observations["EXAMSCORE"]["valueInteger"] == 9
    density = observations[codes.BREAST_COMPOSITION.value]["valueCodeableConcept"]["coding"][0]
    assert (density["code"], density["system"]) == (codes.DENSITY_CODES["c"].value, "http://snomed.info/sct")
    assert observations[codes.PROBABILITY_OF_CANCER.value]["valueQuantity"]["value"] == 0.12
    follow_up = observations[codes.RECOMMENDED_FOLLOW_UP.value]["valueCodeableConcept"]["coding"][0]["code"]
    assert follow_up == codes.FOLLOW_UP_RECALL.value  # exam score 9: recall suggested
    findings = [e["resource"] for e in render_bundle(event)["entry"]
                if e["resource"]["code"]["coding"][0]["code"] == codes.MAMMO_FINDING_CODES["mass"].value]
    assert [f["bodySite"]["coding"][0]["code"] for f in findings] == [codes.LATERALITY_CODES["L"].value] * 2
    allowed = event.model_copy(update={"patient_id": cases.PATIENT_ID})
    report = render_bundle(allowed)["entry"][0]["resource"]
    assert report["subject"] == {"identifier": {"value": cases.PATIENT_ID}}


def test_invalid_bundles_are_refused() -> None:
    bundle = render_bundle(cases.ct_result("1.2.826.0.7.3").event)
    del bundle["entry"][1]["resource"]["code"]  # an Observation without its required code
    with pytest.raises(FhirRenderingError, match="code"):
        validate_bundle(bundle, "1.2.826.0.7.3")
    bundle = render_bundle(cases.ct_result("1.2.826.0.7.3").event)
    bundle["entry"][2]["resource"]["valueCodeableConcept"] = "4A"  # not a CodeableConcept
    with pytest.raises(FhirRenderingError):
        validate_bundle(bundle)


def test_sink_posts_transactions_idempotently(receiver) -> None:
    sink = FhirSink(receiver.url)
    ct, mg = cases.ct_result("1.2.826.0.8.1", prior="1.2.826.0.8.0"), cases.mg_result("1.2.826.0.8.2")
    sink.add(ct)
    sink.add(mg)
    sink.flush()
    assert receiver.transactions == 2
    stored = dict(receiver.resources)
    assert len(stored) == len(render_bundle(ct.event)["entry"]) + len(render_bundle(mg.event)["entry"])
    sink.add(ct)  # at-least-once: the same study again
    sink.flush()
    assert receiver.transactions == 3 and receiver.resources == stored  # updated in place, nothing added
    sink.close()


def test_sink_failures(receiver) -> None:
    sink = FhirSink(receiver.url)
    receiver.answers = [503]
    sink.add(cases.ct_result("1.2.826.0.9.1"))
    with pytest.raises(SinkError) as transient:
        sink.flush()
    assert not transient.value.permanent and transient.value.studies == ("1.2.826.0.9.1",)
    sink.flush()  # still queued: delivered once the server is back
    assert receiver.transactions == 1
    receiver.answers = [422]
    sink.add(cases.ct_result("1.2.826.0.9.2"))
    with pytest.raises(SinkError, match="refused by test") as refused:
        sink.flush()
    assert refused.value.permanent and refused.value.studies == ("1.2.826.0.9.2",)
    sink.flush()  # dropped: later studies are not held behind it
    assert receiver.transactions == 1
    receiver.close()  # nothing listens any more
    sink.add(cases.ct_result("1.2.826.0.9.3"))
    with pytest.raises(SinkError, match="cannot reach") as unreachable:
        sink.flush()
    assert not unreachable.value.permanent


def test_plain_http_only_to_loopback_and_wiring(receiver) -> None:
    with pytest.raises(InsecureTransport, match="fhir_url"):
        FhirSink("http://192.0.2.10/fhir")  # constructed only: nothing is sent
    FhirSink("https://fhir.example.org/r4").close()
    from oncostream.app.pipeline import delivery_sinks

    sinks = delivery_sinks(Settings(fhir_url=receiver.url))
    try:
        assert [s.name for s in sinks] == ["fhir", "store"]
    finally:
        for s in sinks:
            s.close()
