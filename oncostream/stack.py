"""`make stack` / `make stack-down`: start every real service on loopback, write `.stack/env`.

Each service lives in `oncostream/services/<name>.py` with `start(workdir) -> RunningService`.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from oncostream.settings import REPO_ROOT

STACK_DIR = REPO_ROOT / ".stack"
SERVICES = ("kafka", "triton", "orthanc", "prometheus", "s3proxy", "postgres")


def _available() -> list[str]:
    return [n for n in SERVICES if importlib.util.find_spec(f"oncostream.services.{n}") is not None]


def up() -> int:
    STACK_DIR.mkdir(exist_ok=True)
    env: dict[str, str] = {}
    pids: dict[str, int] = {}
    started = []
    for name in _available():
        try:
            service = importlib.import_module(f"oncostream.services.{name}").start(STACK_DIR / name)
        except Exception:
            for running in reversed(started):  # no half-started stack left behind
                running.stop()
            raise
        started.append(service)
        env.update(service.env)
        if service.process is not None:
            pids[name] = service.process.pid
        print(f"started {name}: " + " ".join(f"{k}={v}" for k, v in service.env.items()))
    (STACK_DIR / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (STACK_DIR / "pids.json").write_text(json.dumps(pids))
    print(f"wrote {STACK_DIR / 'env'}")
    return 0


def down() -> int:
    pids_file = STACK_DIR / "pids.json"
    if not pids_file.exists():
        print("no stack running")
        return 0
    for name, pid in json.loads(pids_file.read_text()).items():
        try:
            os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(pid, signal.SIGTERM)
            print(f"stopping {name} (pid {pid})")
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 30
    for pid in json.loads(pids_file.read_text()).values():
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    pids_file.unlink()
    (STACK_DIR / "env").unlink(missing_ok=True)
    return 0


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


if __name__ == "__main__":
    sys.exit({"up": up, "down": down}[sys.argv[1]]())
