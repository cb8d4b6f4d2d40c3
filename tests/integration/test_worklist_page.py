"""The worklist page in a real browser (Debian's headless Chromium) over a real results store: rows by
priority then time left, the SLA clock, a study recorded while the page is open appears on the next poll,
no patient identifiers; a screenshot is saved (ONCOSTREAM_WORKLIST_SCREENSHOT=PATH copies it there, which
is how docs/worklist.png is made)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
import requests

from oncostream.app.worklist import WorklistServer, sla_text, worklist_rows
from oncostream.settings import Settings
from oncostream.store import open_store
from tests import store_cases as cases

pytestmark = pytest.mark.integration


def _uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.10.1137.{n}"


@pytest.fixture
def store(tmp_path):
    opened = open_store(f"sqlite:///{tmp_path / 'results.db'}")
    yield opened
    opened.close()


def _fill(store, now: datetime) -> None:
    store.record(cases.ct_result(_uid(1), priority="URGENT", lung_rads="4B", arrived=now - timedelta(minutes=20)))
    store.record(cases.mg_result(_uid(2), priority="HIGH", exam_score=8, arrived=now - timedelta(hours=2)))
    store.record(cases.ct_result(_uid(3), priority="ROUTINE", lung_rads="3", arrived=now - timedelta(days=1),
                                 prior=_uid(100)))
    store.record(cases.mg_result(_uid(4), priority="LOW", exam_score=1, arrived=now - timedelta(hours=3)))
    store.record(cases.ct_result(_uid(5), priority="HIGH", arrived=now - timedelta(hours=25), nodules=1))  # overdue


def _table(browser) -> list[dict]:
    return browser.execute_script("""
        return [...document.querySelectorAll('#rows tr[data-study]')].map(tr => ({
            study: tr.dataset.study,
            priority: tr.querySelector('td.priority').textContent,
            sla: tr.querySelector('td.sla').textContent,
            prior: tr.querySelector('td.prior').textContent,
            outputs: tr.querySelector('td.outputs').textContent}));""")


def test_worklist_page_in_chromium(browser, store, tmp_path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    now = datetime.now(timezone.utc)
    _fill(store, now)
    server = WorklistServer(store, Settings(), port=0, refresh_s=1.0).start()
    try:
        browser.get(server.url + "/")
        WebDriverWait(browser, 20, poll_frequency=0.2).until(lambda b: len(_table(b)) == 5)
        table = _table(browser)
        # by priority, then least time left: the overdue HIGH study before the one due in 22 h
        assert [r["study"] for r in table] == [_uid(1), _uid(5), _uid(2), _uid(3), _uid(4)]
        assert [r["priority"] for r in table] == ["URGENT", "HIGH", "HIGH", "ROUTINE", "LOW"]
        # the SLA clock: URGENT is read within 60 min of arrival, 20 min have passed
        checked = datetime.now(timezone.utc)
        for row, arrived, minutes in ((table[0], now - timedelta(minutes=20), 60),
                                      (table[1], now - timedelta(hours=25), 1440),
                                      (table[3], now - timedelta(days=1), 10080)):
            left = (arrived + timedelta(minutes=minutes) - checked).total_seconds()
            assert row["sla"] in {sla_text(left + d) for d in (-60, 0, 60)}, row
        assert table[0]["sla"].startswith("due in 3") and table[1]["sla"].startswith("overdue by 1 h 0")
        # the prior comparison, and "no prior" where there was none
        assert table[3]["prior"].startswith(f"vs …{_uid(100)[-8:]} (371 d before): 1 grown (+2.0 mm), 1 new")
        assert [r["prior"] for r in table if r["study"] != _uid(3)] == ["no prior"] * 4
        assert table[0]["outputs"] == "SR ….1.901SEG ….1.902"  # by UID; the whole UID in the tooltip
        assert re.search(r"5 studies · updated", browser.find_element("id", "status").text)

        # a study triaged while the page is open appears on the next poll, in its place
        store.record(cases.ct_result(_uid(6), priority="URGENT", lung_rads="4X", arrived=now - timedelta(minutes=50)))
        WebDriverWait(browser, 20, poll_frequency=0.2).until(lambda b: len(_table(b)) == 6)
        assert [r["study"] for r in _table(browser)][:2] == [_uid(6), _uid(1)]  # 10 min left before 40 min left

        page = browser.page_source
        for identifier in cases.IDENTIFIERS:
            assert identifier not in page
        shot = tmp_path / "worklist.png"
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("ONCOSTREAM_WORKLIST_SCREENSHOT"):
            shutil.copy(shot, os.environ["ONCOSTREAM_WORKLIST_SCREENSHOT"])
    finally:
        server.stop()


def test_api_rows_and_links(store) -> None:
    now = datetime.now(timezone.utc)
    _fill(store, now)
    settings = Settings(stow_rs_url="http://127.0.0.1:8042/dicom-web")
    server = WorklistServer(store, settings, port=0).start()
    try:
        response = requests.get(server.url + "/api/studies", timeout=10)
        assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
        rows = response.json()
        def steady(items: list[dict]) -> list[dict]:  # what does not move with the clock
            return [{k: v for k, v in r.items() if k not in ("seconds_left", "sla")} for r in items]

        assert steady(rows) == steady(json.loads(json.dumps(worklist_rows(store, settings))))
        first = rows[0]
        assert (first["priority"], first["sla_minutes"], first["category"]) == ("URGENT", 60, "Lung-RADS 4B")
        assert first["findings"] == "2 nodules; top: 11.0 mm solid, 4B, p=0.30"
        sr = next(o for o in first["outputs"] if o["kind"] == "SR")
        # delivered by STOW-RS: the object's WADO-RS address
        assert sr["url"] == (f"http://127.0.0.1:8042/dicom-web/studies/{_uid(1)}/series/{_uid(1)}.901.1"
                             f"/instances/{_uid(1)}.901")
        mg = next(r for r in rows if r["study_instance_uid"] == _uid(2))
        assert (mg["category"], mg["findings"]) == ("score 8, density c, recall", "2 findings; top: mass LMLO 0.40")
        assert not any(i in response.text for i in cases.IDENTIFIERS)
        assert "accession_number" not in first and "patient_id" not in first
        assert requests.get(server.url + "/nothing", timeout=10).status_code == 404
        page = requests.get(server.url + "/", timeout=10)
        assert page.headers["Content-Security-Policy"] == "default-src 'self'"
    finally:
        server.stop()


def test_oncostream_worklist_command(store, tmp_path) -> None:
    """`oncostream worklist --port 0` serves the store named by ONCOSTREAM_STORE_URL and prints where."""
    store.record(cases.mg_result(_uid(7), priority="ROUTINE"))
    env = {**os.environ, "ONCOSTREAM_STORE_URL": str(store.engine.url)}
    process = subprocess.Popen([sys.executable, "-m", "oncostream.cli", "worklist", "--port", "0"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        found = None
        for _ in range(100):  # log lines may come first; the address is printed once it listens
            line = process.stdout.readline()
            found = re.search(r"worklist: (http://127\.0\.0\.1:\d+)/", line)
            if found or not line:
                break
        assert found, "oncostream worklist printed no address"
        url = found.group(1)
        rows = requests.get(url + "/api/studies", timeout=10).json()
        assert [r["study_instance_uid"] for r in rows] == [_uid(7)]
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0
