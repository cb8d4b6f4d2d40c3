"""Triton Inference Server on loopback: the `tritonserver` binary shipped inside the nvidia-pytriton
wheel, serving the CPU realisation of `model_repository/` (python-backend steps) for tests and
`make stack`.

The wheel's binary needs three things the wheel does not arrange (DESIGN.md, pitfalls):
- its python-backend stub links `libpython3.11.so`, which must be the running interpreter's, so the
  interpreter's `lib/` goes first on LD_LIBRARY_PATH (with the wheel's bundled `nvidia_pytriton.libs`);
- the stub must sit in the python backend folder: we assemble a backend directory under `workdir`
  (the wheel's `libtriton_python.so` + `triton_python_backend_utils.py` + `python_backend_stubs/3.11/
  triton_python_backend_stub`) and pass `--backend-directory`;
- the stub embeds the base interpreter in isolated mode: it ignores PYTHONPATH and never sees this
  venv. The server therefore gets ONCOSTREAM_STEP_PATH (the repository root + this venv's
  site-packages, `:`-separated) and every generated step `model.py` adds those entries with
  `site.addsitedir` before importing anything, so the step models import `ingest`/`oncostream`,
  onnxruntime, DALI and numpy 1.x (the stub is built against NumPy 1.x) from this venv.

Ports are free ports chosen at start; every listener binds 127.0.0.1. Models are loaded explicitly
(`--model-control-mode explicit --load-model=*`) with config auto-completion disabled
(`--disable-auto-complete-config`, the successor of `--strict-model-config`), so a config the server
would have to guess fails loudly instead. `RunningService.restart()` starts the same server again on the
same ports (what a client sees when Triton is restarted under it).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import requests

from oncostream.services.base import RunningService, ServiceStartError, free_port, wait_until
from oncostream.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0  # loading the ensembles' python steps imports DALI + onnxruntime per instance
STEP_PATH_VARIABLE = "ONCOSTREAM_STEP_PATH"  # read by the generated python-backend model.py files
_PY_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"


def tritonserver_home() -> Path:
    """The `pytriton/tritonserver` folder of the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceStartError("triton: the nvidia-pytriton wheel is not installed (pip install -e '.[test]')")
    home = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (home / "bin" / "tritonserver").exists():
        raise ServiceStartError(f"triton: no tritonserver binary under {home}")
    return home


def is_available() -> bool:
    try:
        tritonserver_home()
    except ServiceStartError:
        return False
    return True


def prepare_backends(workdir: Path, home: Path | None = None) -> Path:
    """Assemble `workdir/backends/python` from the wheel, with the stub for this interpreter copied in."""
    home = home or tritonserver_home()
    stub = home / "python_backend_stubs" / _PY_TAG / "triton_python_backend_stub"
    if not stub.exists():
        raise ServiceStartError(f"triton: the wheel has no python-backend stub for Python {_PY_TAG}")
    backends = workdir / "backends"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    for source in (home / "backends" / "python" / "libtriton_python.so",
                   home / "backends" / "python" / "triton_python_backend_utils.py", stub):
        shutil.copy2(source, python_backend / source.name)
    return backends


def server_environment(home: Path | None = None) -> dict[str, str]:
    """Environment for `tritonserver` and the python-backend stubs it spawns (see module docstring)."""
    home = home or tritonserver_home()
    env = dict(os.environ)
    wheel_libs = home.parent.parent / "nvidia_pytriton.libs"
    lib_dirs = [str(Path(sys.base_prefix) / "lib"), str(wheel_libs)]
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(lib_dirs)
    env[STEP_PATH_VARIABLE] = ":".join([str(REPO_ROOT), *site.getsitepackages()])
    # each stub process runs ONNX Runtime / DALI; on a shared CPU host keep their thread pools small
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start(workdir: Path, repository: Path | None = None, ready_timeout_s: float = READY_TIMEOUT_S,
          log_verbose: int = 0) -> RunningService:
    """Start Triton on loopback serving `repository` (default: build the CPU repository into
    `workdir/repository`). Ready once `/v2/health/ready` answers 200 (every model loaded)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    home = tritonserver_home()
    if repository is None:
        from oncostream.model_build import build_repository

        repository = workdir / "repository"
        shutil.rmtree(repository, ignore_errors=True)
        build_repository("cpu", repository, Settings().model_repository)
    repository = Path(repository).resolve()
    backends = prepare_backends(workdir, home)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    while len({http_port, grpc_port, metrics_port}) < 3:
        grpc_port, metrics_port = free_port(), free_port()
    log_path = workdir / "tritonserver.log"
    command = [
        str(home / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit", "--load-model=*",
        "--disable-auto-complete-config",  # the replacement of the deprecated --strict-model-config
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--http-address=127.0.0.1", f"--http-port={http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
        "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
        "--metrics-interval-ms=1000",
        f"--log-verbose={log_verbose}",
        "--exit-timeout-secs=10",
    ]
    environment = server_environment(home)

    def launch() -> subprocess.Popen:
        # the same command every time: a server started again listens on the same ports
        with open(log_path, "ab") as console:
            return subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=workdir, env=environment, start_new_session=True)

    def ready() -> bool:
        return requests.get(f"http://{http}/v2/health/ready", timeout=2).status_code == 200

    process = launch()
    http = f"127.0.0.1:{http_port}"
    service = RunningService(
        name="triton",
        env={"TRITON_GRPC": f"127.0.0.1:{grpc_port}", "TRITON_HTTP": http},
        process=process, workdir=workdir, log_path=log_path,
        extra={"metrics_port": metrics_port, "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics",
               "repository": repository},
        launch=launch, ready=ready, ready_timeout_s=ready_timeout_s)
    try:
        wait_until(ready, ready_timeout_s, f"tritonserver on {http}", process=process, log_path=log_path)
    except BaseException:
        service.stop()
        raise
    log.info("triton ready: grpc %s, http %s, metrics %d (pid %d)", service.env["TRITON_GRPC"], http,
             metrics_port, process.pid)
    return service
