"""PostgreSQL on loopback (Debian package ``postgresql``): a throwaway cluster for the results store.

``start(workdir)`` runs ``initdb`` on a fresh data directory, starts ``postgres`` on a free port (TCP on
127.0.0.1 only; its Unix socket inside the data directory), waits until it answers, creates the
database ``oncostream`` and returns ``STORE_URL=postgresql://oncostream@127.0.0.1:PORT/oncostream``.
PostgreSQL refuses to run as root: as root, initdb and the server run as the ``postgres`` system user
(Popen's ``user=``, no intermediate process) on a data directory that user owns, created under the
system temp folder when ``workdir`` is not reachable by it (pytest's temp folders are root-only). Local
connections are trusted (``--auth=trust``): a development and test cluster, never a production one.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from oncostream.services.base import RunningService, ServiceStartError, free_port, wait_until

START_TIMEOUT_S = 60.0
DATABASE = "oncostream"
USER = "oncostream"
SYSTEM_USER = "postgres"  # the Debian package's account, used when we are root


def _bindir() -> Path | None:
    """The newest installed server's bin/ (Debian: /usr/lib/postgresql/<major>/bin), else the PATH's."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("postgres")
    return Path(found).parent if found and shutil.which("initdb") else None


def is_available() -> bool:
    if _bindir() is None:
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return False
    return True


def _run_as() -> dict:
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam(SYSTEM_USER)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _data_dir(workdir: Path) -> Path:
    """A fresh data directory the server's account owns; under workdir when that account can reach it."""
    as_user = _run_as()
    candidate = workdir / "data"
    shutil.rmtree(candidate, ignore_errors=True)
    if not as_user:
        candidate.mkdir(mode=0o700)
        return candidate
    candidate.mkdir(mode=0o700)
    os.chown(candidate, as_user["user"], as_user["group"])
    reachable = subprocess.run(["test", "-w", str(candidate)], check=False, **as_user).returncode == 0
    if reachable:
        return candidate
    candidate.rmdir()
    data = Path(tempfile.mkdtemp(prefix="oncostream-postgres-"))
    os.chown(data, as_user["user"], as_user["group"])
    return data


def start(workdir: Path, durable: bool = True) -> RunningService:
    """Start a fresh cluster; ``durable=False`` turns fsync off (tests: faster, nothing to keep)."""
    bindir = _bindir()
    if bindir is None or not is_available():
        raise ServiceStartError("PostgreSQL needs initdb and postgres (Debian package postgresql: "
                                "scripts/install_system_deps.sh)" + ("" if bindir is None else
                                                                      f" and, as root, the {SYSTEM_USER} account"))
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data = _data_dir(workdir)
    as_user = _run_as()
    log_path = workdir / "postgres.log"
    with open(log_path, "wb") as log:
        init = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                               "--encoding=UTF8", "--no-locale"],
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False,
                              cwd=data, **as_user)
    if init.returncode != 0:
        raise ServiceStartError(f"initdb exited with {init.returncode}; see {log_path}")
    port = free_port()
    settings = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data}"]
    if not durable:
        settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]

    def launch() -> subprocess.Popen:
        log = open(log_path, "ab")  # noqa: SIM115 - stays open for the child's lifetime
        try:
            return subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-p", str(port), *settings],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=data,
                                    start_new_session=True, **as_user)
        finally:
            log.close()

    def ready() -> bool:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres", connect_timeout=2):
            return True

    process = launch()
    try:
        wait_until(ready, START_TIMEOUT_S, "PostgreSQL", process, log_path)
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    return RunningService(name="postgres", env={"STORE_URL": f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}"},
                          process=process, workdir=workdir, log_path=log_path, launch=launch, ready=ready,
                          ready_timeout_s=START_TIMEOUT_S, extra={"port": port, "data_dir": data})


def stop(service: RunningService, remove_data: bool = True) -> None:
    """Fast shutdown (SIGINT: open sessions are ended, not waited for), then the data directory removed."""
    if service.process is not None and service.process.poll() is None:
        service.process.send_signal(signal.SIGINT)
    service.stop()
    if remove_data:
        shutil.rmtree(service.extra["data_dir"], ignore_errors=True)
