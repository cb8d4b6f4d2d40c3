"""Resumable training: checkpoints kept in the repository (``training/checkpoints/``), so that a
``make models`` longer than one working session continues where it stopped, on another machine too.

Each checkpoint is keyed by what the stage trains on (the data's fingerprint, seeds, steps): a
checkpoint made from other data is never resumed or reused, it is set aside with a log line.

- ``<stage>.pt``: a finished stage's weights; ``make models`` skips a stage whose weights are there
  for the same key.
- ``<stage>.done.json``: a stage without weights of its own (export and calibration) that ran on
  the finished weights of the same keys; ``make models`` does not run it again.
- ``<stage>.partial.pt``: a stage in progress (weights, optimiser, learning-rate schedule, step,
  numpy and torch random states, and what the loop keeps between steps), written every ``ONCOSTREAM_CHECKPOINT_EVERY_S`` seconds (default 300) and at the
  end; resuming from it continues the same random streams, so a resumed run draws the batches an
  uninterrupted one would have drawn.

The weights are small (the five models together are under 2 MB), so committing them costs little.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_DIR = Path(os.environ.get("ONCOSTREAM_CHECKPOINT_DIR", Path(__file__).resolve().parent / "checkpoints"))


def _log(**fields) -> None:
    print(json.dumps({"checkpoint": True, **fields}), flush=True)


def _save(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _load(path: Path, key: str) -> dict | None:
    if not path.exists():
        return None
    saved = torch.load(path, weights_only=False)
    if saved.get("key") != key:
        _log(stage=path.name, ignored="made from other data or another schedule", saved_key=saved.get("key"), key=key)
        return None
    return saved


def finished(stage: str, key: str) -> dict[str, torch.Tensor] | None:
    """The weights of a finished stage trained on ``key``, or None."""
    saved = _load(CHECKPOINT_DIR / f"{stage}.pt", key)
    return None if saved is None else saved["weights"]


def save_finished(stage: str, key: str, net: torch.nn.Module) -> None:
    """Keep a finished stage's weights; its in-progress checkpoint is no longer needed."""
    _save(CHECKPOINT_DIR / f"{stage}.pt", {"key": key, "weights": net.state_dict()})
    (CHECKPOINT_DIR / f"{stage}.partial.pt").unlink(missing_ok=True)
    _log(stage=stage, finished=True)


def done(stage: str, key: str) -> bool:
    """Whether a stage without weights of its own (an export, a calibration) ran for ``key``."""
    path = CHECKPOINT_DIR / f"{stage}.done.json"
    return path.exists() and json.loads(path.read_text()).get("key") == key


def mark_done(stage: str, key: str) -> None:
    path = CHECKPOINT_DIR / f"{stage}.done.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key}, indent=1) + "\n")


class Progress:
    """The resumable state of one training loop: restores it from ``<stage>.partial.pt`` when one
    exists for the same key, and saves it every ``ONCOSTREAM_CHECKPOINT_EVERY_S`` seconds.

    ``schedule`` is the learning-rate schedule (``state_dict``/``load_state_dict``, as torch's);
    ``rng`` the numpy generator the loop draws its batches from; ``extra`` what the loop keeps
    between steps (e.g. the best weights so far). The loop starts after ``step`` (0, or where the
    checkpoint stopped) and calls ``tick(step)`` after each step. ``enabled=False`` (time-budgeted
    runs, which cannot be replayed) makes it save and restore nothing."""

    def __init__(self, stage: str, key: str, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 schedule, rng: np.random.Generator, enabled: bool = True, extra: dict | None = None):
        self.stage, self.key = stage, key
        self.net, self.optimizer, self.schedule, self.rng = net, optimizer, schedule, rng
        self.enabled = enabled
        self.extra = dict(extra or {})
        self.path = CHECKPOINT_DIR / f"{stage}.partial.pt"
        self.every_s = float(os.environ.get("ONCOSTREAM_CHECKPOINT_EVERY_S", "300"))
        self.last_save = time.monotonic()
        self.step = 0
        saved = _load(self.path, key) if enabled else None
        if saved is not None:
            net.load_state_dict(saved["weights"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            self.step = saved["step"]
            rng.bit_generator.state = saved["rng"]
            torch.set_rng_state(saved["torch_rng"])
            self.extra = saved.get("extra", {})
            _log(stage=stage, resumed_at_step=saved["step"])

    def tick(self, step: int) -> None:
        """After each step: save when the interval has passed."""
        self.step = step
        if self.enabled and time.monotonic() - self.last_save >= self.every_s:
            self.save()

    def save(self) -> None:
        if not self.enabled:
            return
        _save(self.path, {"key": self.key, "weights": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                          "schedule": self.schedule.state_dict(), "step": self.step, "rng": self.rng.bit_generator.state,
                          "torch_rng": torch.get_rng_state(), "extra": self.extra})
        self.last_save = time.monotonic()
        _log(stage=self.stage, saved_at_step=self.step)
