"""TritonBackend's pieces that need no server: where shared memory applies, the metadata check
against a contract, and how a mammography exam is split into requests."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.backends.triton import TritonBackend, is_local, metadata_differences
from oncostream.model_contract import ModelContract, TensorSpec

CONTRACT = ModelContract(
    name="net", version="1", task="t", preprocessing="p", max_batch_size=8,
    inputs=[TensorSpec(name="image", dtype="FP32", shape=[-1, 1, 512, 416])],
    outputs=[TensorSpec(name="malignancy", dtype="FP32", shape=[-1, 1])])


def _metadata(**changes) -> dict:
    metadata = {"name": "net", "versions": ["1"], "platform": "python",
                "inputs": [{"name": "image", "datatype": "FP32", "shape": ["-1", "1", "512", "416"]}],
                "outputs": [{"name": "malignancy", "datatype": "FP32", "shape": ["-1", "1"]}]}
    for key, value in changes.items():
        kind, field = key.split("__")
        metadata[kind][0][field] = value
    return metadata


@pytest.mark.parametrize(("url", "local"), [
    ("127.0.0.1:8001", True), ("localhost:8001", True), ("[::1]:8001", True),
    ("10.0.0.7:8001", False), ("triton.svc.cluster.local:8001", False),
], ids=["ipv4-loopback", "localhost", "ipv6-loopback", "private-address", "service-name"])
def test_shared_memory_only_for_this_host(url, local):
    assert is_local(url) is local


def test_matching_metadata_has_no_differences():
    assert metadata_differences(_metadata(), CONTRACT) == []


@pytest.mark.parametrize(("changes", "expected"), [
    ({"inputs__name": "pixels"}, "input 'image' missing"),
    ({"inputs__datatype": "FP16"}, "is FP16, card says FP32"),
    ({"inputs__shape": ["-1", "1", "256", "208"]}, "has shape [-1, 1, 256, 208]"),
    ({"outputs__shape": ["-1"]}, "output 'malignancy' has shape [-1]"),
    ({"outputs__name": "score"}, "does not declare: ['score']"),
], ids=["renamed-input", "other-dtype", "other-fixed-dims", "other-rank", "undeclared-output"])
def test_metadata_differences_name_what_differs(changes, expected):
    differences = metadata_differences(_metadata(**changes), CONTRACT)
    assert any(expected in d for d in differences), differences


@pytest.mark.parametrize(("shapes", "groups"), [
    ([(64, 48)] * 4, [[0, 1, 2, 3]]),
    ([(64, 48)] * 6, [[0, 1, 2, 3], [4, 5]]),
    ([(64, 48), (60, 48), (64, 48), (60, 48)], [[0, 2], [1, 3]]),
], ids=["four-equal-views", "more-than-a-batch", "two-sizes"])
def test_views_are_grouped_by_shape_within_the_classifier_batch(shapes, groups):
    backend = object.__new__(TritonBackend)
    backend._views_per_request = 4
    assert backend._view_groups([np.zeros(s, np.float32) for s in shapes]) == groups
