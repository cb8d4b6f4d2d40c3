"""Usable cores: the affinity capped by a cgroup CPU quota (a container's CPU limit)."""

from __future__ import annotations

import os

import pytest

from oncostream.cpus import quota_cores, usable_cores


@pytest.mark.parametrize("cpu_max, cores", [("400000 100000\n", 4), ("150000 100000\n", 2), ("50000 100000\n", 1),
                                            ("max 100000\n", None), ("garbage\n", None)])
def test_cgroup_v2_quota(tmp_path, cpu_max, cores):
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert quota_cores(tmp_path) == cores


@pytest.mark.parametrize("quota, period, cores", [("300000", "100000", 3), ("-1", "100000", None)])
def test_cgroup_v1_quota(tmp_path, quota, period, cores):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(period)
    assert quota_cores(tmp_path) == cores


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert quota_cores(tmp_path) is None
    assert usable_cores(tmp_path) == len(os.sched_getaffinity(0))


def test_a_quota_below_the_affinity_caps_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert usable_cores(tmp_path) == 1
