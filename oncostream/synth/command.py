"""`oncostream synth`: write synthetic screening studies and their ground truth to a directory.

Layout: OUT/mg-0000/<SOPInstanceUID>.dcm, OUT/ct-0000/<SOPInstanceUID>.dcm, and
OUT/ground_truth/<StudyInstanceUID>.json. Study i of each kind uses ``study_seed(seed, i)``, so the
studies differ and a whole run is reproducible from --seed alone.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydicom.dataset import Dataset

from oncostream.synth.ldct import ldct_datasets, make_ldct_phantom
from oncostream.synth.mammo import make_mammo_phantom, mammo_datasets

_log = logging.getLogger(__name__)
_SEED_STRIDE = 100_003  # a prime larger than any realistic per-run study count


def study_seed(seed: int, index: int) -> int:
    """Phantom seed of study ``index`` of a run started with ``seed``."""
    if index < 0 or index >= _SEED_STRIDE:
        raise ValueError(f"index must be in [0, {_SEED_STRIDE}), got {index}")
    return seed * _SEED_STRIDE + index


def write_series(folder: Path, datasets: list[Dataset]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for ds in datasets:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)


def write_studies(out: Path, mammo: int, ldct: int, seed: int, size: str) -> list[Path]:
    """Write ``mammo`` exams and ``ldct`` series under ``out``; returns the study folders in order."""
    if mammo < 0 or ldct < 0:
        raise ValueError(f"study counts must be >= 0, got mammo={mammo}, ldct={ldct}")
    out = Path(out)
    truth_dir = out / "ground_truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    folders = []
    kinds = (("mammo exam", "mg", mammo, make_mammo_phantom, mammo_datasets),
             ("LDCT series", "ct", ldct, make_ldct_phantom, ldct_datasets))
    for label, prefix, count, make_phantom, to_datasets in kinds:
        for i in range(count):
            started = time.perf_counter()
            phantom = make_phantom(study_seed(seed, i), size)
            folder = out / f"{prefix}-{i:04d}"
            write_series(folder, to_datasets(phantom))
            (truth_dir / f"{phantom.truth.study_instance_uid}.json").write_text(
                phantom.truth.model_dump_json(indent=1))
            folders.append(folder)
            _log.info("%s %s: %s in %.1f s", label, folder.name, phantom.truth.study_instance_uid,
                      time.perf_counter() - started)
    return folders


def main(args) -> int:
    """Handler of `oncostream synth` (args.out, args.mammo, args.ldct, args.seed, args.size, args.rounds):
    with ``--rounds R``, R screening rounds of the same patients under OUT/round-1/ ... (rounds.py)."""
    rounds = getattr(args, "rounds", None)
    if rounds is not None:
        from oncostream.synth.rounds import write_rounds

        folders = write_rounds(args.out, args.mammo, args.ldct, args.seed, args.size, rounds)
        print(f"wrote {len(folders)} studies ({rounds} rounds) to {args.out}")
        return 0
    folders = write_studies(args.out, args.mammo, args.ldct, args.seed, args.size)
    print(f"wrote {len(folders)} studies to {args.out}")
    return 0
