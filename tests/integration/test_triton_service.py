"""oncostream/services/triton.py on tiny repositories: the python-backend stub runs with this project
and its venv (numpy 1.x, DESIGN.md pitfalls), and a broken repository fails start-up with the log."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from oncostream.services import triton
from oncostream.services.base import ServiceStartError
from oncostream.settings import REPO_ROOT

pytestmark = pytest.mark.integration

_PROBE = '''
name: "probe"
backend: "python"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "numpy_version" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "ingest_file" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
'''


def _probe_repository(root: Path) -> Path:
    """One python model built the way `models build` builds steps: the generated entry point."""
    from oncostream.model_build import write_python_entry

    (root / "probe" / "1").mkdir(parents=True)
    (root / "probe" / "config.pbtxt").write_text(_PROBE)
    write_python_entry(root / "probe" / "1", "probe", "tests.integration.triton_probe:Probe")
    return root


def test_python_backend_runs_this_project_and_its_venv(tmp_path):
    import tritonclient.grpc as grpcclient

    repository = _probe_repository(tmp_path / "repository")
    service = triton.start(tmp_path / "work", repository, ready_timeout_s=60)
    try:
        client = grpcclient.InferenceServerClient(service.env["TRITON_GRPC"])
        x = grpcclient.InferInput("x", [3], "FP32")
        x.set_data_from_numpy(np.arange(3, dtype=np.float32))
        result = client.infer("probe", [x])
        client.close()
    finally:
        service.stop()
    assert result.as_numpy("numpy_version")[0].decode().startswith("1."), "the stub needs numpy 1.x"
    assert Path(result.as_numpy("ingest_file")[0].decode()).is_relative_to(REPO_ROOT)
    np.testing.assert_array_equal(result.as_numpy("y"), [0, 2, 4])


def test_broken_repository_fails_start_up_with_the_log(tmp_path):
    model = tmp_path / "repository" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(textwrap.dedent('''
        name: "broken"
        backend: "no_such_backend"
        max_batch_size: 0
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
    '''))
    with pytest.raises(ServiceStartError, match="broken"):
        triton.start(tmp_path / "work", tmp_path / "repository", ready_timeout_s=60)
