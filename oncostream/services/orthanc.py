"""Orthanc PACS on loopback (Debian packages ``orthanc`` + ``orthanc-dicomweb``): the PACS that
receives oncostream's SR and SEG by C-STORE and by DICOMweb STOW-RS in tests and ``make stack``.

Everything lives in ``workdir``: a generated JSON configuration, a fresh storage directory and the
log. Orthanc listens on 127.0.0.1 only, with HTTP authentication off (nothing but loopback can
reach it) and the DICOMweb plugin mounted at ``/dicom-web/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import requests

from oncostream.services.base import RunningService, ServiceStartError, free_port, wait_until

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web/"
DEFAULT_AE_TITLE = "ORTHANC"
# calling AE titles that may store into this Orthanc, and only from 127.0.0.1: oncostream's sinks and
# DCMTK's default titles. Orthanc 1.10 cannot bind to loopback alone, so this (with
# DicomCheckModalityHost) is what keeps its DICOM port closed to other hosts.
DEFAULT_CALLERS = ("ONCOSTREAM", "STORESCU", "ECHOSCU")
START_TIMEOUT_S = 60.0


def write_config(workdir: Path, dicom_port: int, http_port: int, ae_title: str = DEFAULT_AE_TITLE,
                 modalities: dict[str, tuple[str, str, int]] | None = None,
                 callers: tuple[str, ...] = DEFAULT_CALLERS) -> Path:
    """Write Orthanc's configuration; ``modalities`` maps a name to (AE title, host, port) of peers
    Orthanc may send to (C-STORE SCU from Orthanc, used to test the gateway with a real PACS);
    ``callers`` are the AE titles allowed to store from loopback."""
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    # oncostream itself also queries (C-FIND) and retrieves (C-GET) a patient's prior reports
    known = {f"caller-{title.lower()}": {"AET": title, "Host": "127.0.0.1", "Port": 104, "AllowEcho": True,
                                         "AllowStore": True, "AllowFind": title == "ONCOSTREAM",
                                         "AllowMove": False, "AllowGet": title == "ONCOSTREAM"}
             for title in callers}
    known.update({name: {"AET": aet, "Host": host, "Port": port} for name, (aet, host, port) in
                  (modalities or {}).items()})
    config = {
        "Name": "oncostream-orthanc",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ae_title,
        # loopback only. Orthanc 1.10 listens on every interface and has no bind address, so:
        # HTTP refuses non-local clients (RemoteAccessAllowed=false), which is why no credential is
        # needed, and DICOM accepts only the known callers, from 127.0.0.1 (DicomCheckModalityHost)
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": True,
        "UnknownSopClassAccepted": True,
        # one instance per SOPInstanceUID: a replayed result must not replace the stored one
        "OverwriteInstances": False,
        "StorageCompression": False,
        "DicomModalities": known,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT, "EnableWado": False, "Ssl": False,
                     "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        "HttpTimeout": 30,
        "ConcurrentJobs": 1,
        "LimitFindResults": 0,
        "SaveJobs": False,
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def is_available() -> bool:
    return ORTHANC_BINARY.exists() and DICOMWEB_PLUGIN.exists()


def start(workdir: Path, ae_title: str = DEFAULT_AE_TITLE,
          modalities: dict[str, tuple[str, str, int]] | None = None,
          callers: tuple[str, ...] = DEFAULT_CALLERS) -> RunningService:
    """Start Orthanc with a fresh storage dir under ``workdir``; ready once REST and DICOMweb answer."""
    if not is_available():
        raise ServiceStartError(f"Orthanc needs {ORTHANC_BINARY} and {DICOMWEB_PLUGIN} "
                                "(Debian packages orthanc, orthanc-dicomweb: scripts/install_system_deps.sh)")
    workdir = Path(workdir).resolve()
    shutil.rmtree(workdir / "storage", ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    while http_port == dicom_port:
        http_port = free_port()
    config = write_config(workdir, dicom_port, http_port, ae_title, modalities, callers)
    log_path = workdir / "orthanc.log"

    def launch() -> subprocess.Popen:
        # the same configuration every time: started again, Orthanc keeps its ports and its storage
        with open(log_path, "ab") as log:
            return subprocess.Popen([str(ORTHANC_BINARY), f"--logfile={log_path.with_suffix('.trace.log')}",
                                     str(config)], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    process = launch()
    http = f"http://127.0.0.1:{http_port}"

    def ready() -> bool:
        system = requests.get(f"{http}/system", timeout=2)
        studies = requests.get(f"{http}{DICOMWEB_ROOT}studies", timeout=2)
        return system.ok and studies.ok

    try:
        wait_until(ready, START_TIMEOUT_S, "Orthanc", process, log_path.with_suffix(".trace.log"))
    except ServiceStartError:
        process.kill()
        process.wait(timeout=10)
        raise
    return RunningService(
        name="orthanc",
        env={"ORTHANC_DICOM": f"127.0.0.1:{dicom_port}", "ORTHANC_HTTP": http},
        process=process, workdir=workdir, log_path=log_path.with_suffix(".trace.log"),
        extra={"ae_title": ae_title, "callers": tuple(callers), "dicom_port": dicom_port, "http_port": http_port,
               "dicomweb_root": f"{http}{DICOMWEB_ROOT.rstrip('/')}"},
        launch=launch, ready=ready, ready_timeout_s=START_TIMEOUT_S,
    )
