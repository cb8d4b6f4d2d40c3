"""`oncostream worklist --port P [--host H]`: the triage queue as a web page over the results store.

The page (``/``) lists studies by priority, then by time left against the program's reading deadline
(``sla_minutes`` of ``postprocess/programs/<program>.yaml``), with the category, a findings summary,
the comparison with the prior round and the SR/SEG objects; its script polls ``/api/studies`` (the same
rows as JSON) every few seconds, so newly triaged studies appear without a reload, and ticks the SLA
clocks every second. It shows what the store holds, which carries no patient identifier unless the
program allows them. Standard library HTTP server: a handful of readers on a trusted network, loopback
by default.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from oncostream.contracts import LungRadsCategory, MammoCategory, MammoFinding, NoduleFinding, TriageEvent
from oncostream.settings import Settings
from oncostream.store import ResultsStore, StoreError, WorklistEntry, open_store
from oncostream.store.sql import PRIORITY_RANK

log = logging.getLogger(__name__)

DEFAULT_REFRESH_S = 3.0
_MAX_ROWS = 500
_OUTPUT_ORDER = {"SR": 0, "SEG": 1, "SC": 2}  # the report first


def sla_text(seconds_left: float) -> str:
    """``due in 40 min`` / ``overdue by 1 h 05 min``; the page's script formats the same way."""
    prefix = "due in" if seconds_left >= 0 else "overdue by"
    minutes = int(abs(seconds_left) // 60)
    if minutes < 60:
        body = f"{minutes} min"
    elif minutes < 48 * 60:
        body = f"{minutes // 60} h {minutes % 60:02d} min"
    else:
        body = f"{minutes // (24 * 60)} d {minutes % (24 * 60) // 60} h"
    return f"{prefix} {body}"


def _category_text(event: TriageEvent) -> str:
    category = event.category
    if isinstance(category, LungRadsCategory):
        text = f"Lung-RADS {category.lung_rads}"
    elif isinstance(category, MammoCategory):
        text = f"score {category.exam_score}, density {category.density}" + (", recall" if category.recall else "")
    else:  # pragma: no cover - the contract has two kinds
        text = str(category)
    return text + (" (follow-up)" if getattr(category, "compared_with_prior", False) else "")


def _findings_text(event: TriageEvent) -> str:
    nodules = [f for f in event.findings if isinstance(f, NoduleFinding)]
    marks = [f for f in event.findings if isinstance(f, MammoFinding)]
    if nodules:
        top = max(nodules, key=lambda f: f.malignancy_probability)
        return (f"{len(nodules)} nodule{'s' if len(nodules) > 1 else ''}; top: {top.mean_diameter_mm:.1f} mm "
                f"{top.composition.replace('_', '-')}, {top.lung_rads}, p={top.malignancy_probability:.2f}")
    if marks:
        top = max(marks, key=lambda f: f.score)
        return (f"{len(marks)} finding{'s' if len(marks) > 1 else ''}; top: {top.type} "
                f"{top.laterality}{top.view} {top.score:.2f}")
    return "no findings"


def _prior_text(event: TriageEvent) -> str:
    if not event.prior_study_instance_uid:
        return "no prior"
    when = f" ({event.prior_interval_days} d before)" if event.prior_interval_days is not None else ""
    text = f"vs …{event.prior_study_instance_uid[-8:]}{when}"
    category = event.category
    if isinstance(category, MammoCategory):
        if category.prior_exam_score is not None:
            text += f": score {category.prior_exam_score} → {category.exam_score}"
        new = sum(1 for f in event.findings if isinstance(f, MammoFinding) and f.new_since_prior)
        return text + (f", {new} new finding{'s' if new != 1 else ''}" if new else "")
    nodules = [f for f in event.findings if isinstance(f, NoduleFinding)]
    grown = [f for f in nodules if f.growing]
    stable = [f for f in nodules if f.prior_tracking_uid and not f.growing]
    new = [f for f in nodules if not f.prior_tracking_uid]
    parts = []
    if grown:
        biggest = max(grown, key=lambda f: f.diameter_change_mm or 0.0)
        parts.append(f"{len(grown)} grown (+{biggest.diameter_change_mm or 0.0:.1f} mm)")
    if stable:
        parts.append(f"{len(stable)} stable")
    if new:
        parts.append(f"{len(new)} new")
    return text + (": " + ", ".join(parts) if parts else "")


def _output_url(dicomweb_root: str | None, study_uid: str, series_uid: str | None, sop_uid: str) -> str | None:
    """WADO-RS address of an object delivered by STOW-RS to ``dicomweb_root`` (PS3.18 10.4)."""
    if not dicomweb_root or not series_uid:
        return None
    return f"{dicomweb_root.rstrip('/')}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def worklist_rows(store: ResultsStore, settings: Settings, now: datetime | None = None,
                  limit: int = _MAX_ROWS) -> list[dict]:
    """The page's rows: by priority, then least time left against the program's deadline."""
    from postprocess.priority import ProgramPolicyError, load_program

    now = now or datetime.now(timezone.utc)
    rows = []
    for entry in store.worklist(limit=limit):
        event = entry.event
        try:
            sla_minutes = load_program(event.program).sla_minutes[event.priority]
        except ProgramPolicyError:
            sla_minutes = load_program("default").sla_minutes[event.priority]
        deadline = event.arrived_at + timedelta(minutes=sla_minutes)
        left = (deadline - now).total_seconds()
        rows.append(_row(entry, settings, sla_minutes, deadline, left))
    rows.sort(key=lambda r: (PRIORITY_RANK[r["priority"]], r["seconds_left"]))
    return rows


def _row(entry: WorklistEntry, settings: Settings, sla_minutes: int, deadline: datetime, left: float) -> dict:
    event = entry.event
    row = {
        "study_instance_uid": event.study_instance_uid,
        "modality": event.modality,
        "program": event.program,
        "priority": event.priority,
        "category": _category_text(event),
        "findings": _findings_text(event),
        "prior": _prior_text(event),
        "prior_study_instance_uid": event.prior_study_instance_uid,
        "needs_human_review": event.needs_human_review,
        "review_reasons": list(event.review_reasons),
        "incomplete": event.incomplete,
        "study_date": entry.study_date.isoformat() if entry.study_date else None,
        "arrived_at": event.arrived_at.isoformat(),
        "triaged_at": event.triaged_at.isoformat(),
        "sla_minutes": sla_minutes,
        "deadline": deadline.isoformat(),
        "seconds_left": round(left, 1),
        "sla": sla_text(left),
        "outputs": [{"kind": o.kind, "sop_instance_uid": o.sop_instance_uid, "path": o.path,
                     "url": _output_url(settings.stow_rs_url, event.study_instance_uid, o.series_instance_uid,
                                        o.sop_instance_uid)}
                    for o in sorted(entry.outputs, key=lambda o: (_OUTPUT_ORDER.get(o.kind, 9), o.sop_instance_uid))],
    }
    # present only when the program allows identifiers (otherwise the store never had them)
    for key in ("accession_number", "patient_id"):
        if getattr(event, key):
            row[key] = getattr(event, key)
    return row


class WorklistServer:
    """The page and its JSON over one store; ``start()`` serves on a background thread, ``port`` 0 picks one."""

    def __init__(self, store: ResultsStore, settings: Settings, host: str = "127.0.0.1", port: int = 0,
                 refresh_s: float = DEFAULT_REFRESH_S):
        if not isinstance(store, ResultsStore):
            raise TypeError(f"store: want a ResultsStore, got {type(store).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port: {port} is not a TCP port")
        if refresh_s <= 0:
            raise ValueError(f"refresh_s: want a positive number of seconds, got {refresh_s}")
        self.store = store
        self.settings = settings
        self.refresh_s = refresh_s
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"

    def start(self) -> WorklistServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="oncostream-worklist", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _handler(self):
        from oncostream.app.worklist_page import PAGE, SCRIPT, STYLE

        server = self
        page = PAGE.replace("{refresh_ms}", str(int(server.refresh_s * 1000))).encode()
        static = {"/": ("text/html; charset=utf-8", page),
                  "/worklist.js": ("text/javascript; charset=utf-8", SCRIPT.encode()),
                  "/worklist.css": ("text/css; charset=utf-8", STYLE.encode())}

        class Handler(BaseHTTPRequestHandler):
            server_version = "oncostream-worklist"

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                path = urlsplit(self.path).path
                if path == "/api/studies":
                    try:
                        body = json.dumps(worklist_rows(server.store, server.settings)).encode()
                    except StoreError as exc:
                        log.warning("worklist: %s", exc)
                        self._send(HTTPStatus.SERVICE_UNAVAILABLE, "application/json",
                                   json.dumps({"error": "results store unavailable"}).encode())
                        return
                    self._send(HTTPStatus.OK, "application/json", body)
                elif path in static:
                    self._send(HTTPStatus.OK, *static[path])
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")

            def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Security-Policy", "default-src 'self'")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:
                log.debug("worklist %s", fmt % args)

        return Handler


def main_worklist(args) -> int:
    """`oncostream worklist --port P [--host H]`."""
    settings = Settings()
    store = open_store(settings.store_url, allow_patient_identifiers=settings.allow_patient_identifiers)
    server = WorklistServer(store, settings, host=args.host, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.stop, daemon=True).start())
    print(f"worklist: {server.url}/ (rows as JSON: {server.url}/api/studies); store {store!r}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0
