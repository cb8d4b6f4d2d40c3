"""The baseline: the sequential script a user would write around the same committed models.

    .venv/bin/python -m perf.naive_script DIR OUT [--same-work]

Read every file with pydicom, group by StudyInstanceUID, and for one study after another: decode pixels
(``pixel_array``), preprocess with NumPy (the numpy twins of oncostream's preprocessing, the same maths
the models were trained with), run each model in ONNX Runtime one input at a time (batch 1), and write a
plain Basic Text SR next to one JSON line per study. No assembly bounds, no canonical CT orientation (the
synthetic series are axial, head-first), no threads, no overlap. Model loading happens before the clock.

Writes OUT/naive.jsonl (one line per study: uid, modality, started, finished: seconds on the monotonic
clock) and prints one JSON summary line.

``--same-work``: segment the look-back candidates too (ingest/steps/ldct.py series_candidates: the
detector peaks below the operating point that oncostream keeps for a later round), so the script does the
same model work as oncostream and the comparison measures the engineering, not the work.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ingest.canonical.mammo import canonical_frame
from ingest.preprocess import ldct as ldct_pre
from ingest.preprocess.mammo import preprocess_view_reference
from ingest.steps.ldct import extract_candidates, series_candidates
from oncostream.model_contract import MODEL_NAMES, load_contract, onnx_path
from oncostream.settings import DEFAULT_MODEL_REPOSITORY


def load_models() -> dict[str, ort.InferenceSession]:
    return {name: ort.InferenceSession(str(onnx_path(name, DEFAULT_MODEL_REPOSITORY)),
                                       providers=["CPUExecutionProvider"]) for name in MODEL_NAMES}


def run1(session: ort.InferenceSession, name: str, array: np.ndarray) -> dict[str, np.ndarray]:
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, session.run(outputs, {name: array})))


def mammo_study(models, datasets) -> dict:
    scores = []
    for ds in datasets:
        stored = ds.pixel_array.astype(np.float32)
        laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).upper()
        frame = canonical_frame(ds, stored, laterality, str(ds.get("ViewPosition", "")).upper())
        image = preprocess_view_reference(stored, frame)
        for flipped in (image, image[::-1]):  # the view and its up-down mirror, one at a time
            x = np.ascontiguousarray(flipped[None, None], np.float32)
            scores.append(float(run1(models["mammo_classifier"], "image", x)["malignancy"].ravel()[0]))
            run1(models["mammo_density"], "image", x)
    return {"score": max(scores)}


def ldct_study(models, datasets, threshold: float, same_work: bool = False) -> dict:
    datasets = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    volume = np.stack([d.pixel_array.astype(np.float32) * float(d.get("RescaleSlope", 1) or 1)
                       + float(d.get("RescaleIntercept", 0) or 0) for d in datasets])
    row, col = (float(v) for v in datasets[0].PixelSpacing)
    z = abs(float(datasets[1].ImagePositionPatient[2]) - float(datasets[0].ImagePositionPatient[2]))
    spacing = np.array([z, row, col], np.float32)
    scaled = ldct_pre.denoise_input_reference(volume)
    denoised = np.empty_like(scaled)
    for k in range(len(scaled)):  # one slice at a time
        denoised[k] = run1(models["ldct_denoise"], "image", scaled[k][None, None])["denoised"][0, 0]
    denoised *= np.float32(ldct_pre.DENOISE_SCALE)
    detector_in, grid = ldct_pre.detector_input_reference(denoised, spacing)
    out = run1(models["ldct_nodule_detector"], "volume", detector_in[None, None])
    find = series_candidates if same_work else extract_candidates
    candidates = find(out["heatmap"][0, 0], out["diameter_mm"][0, 0], grid, threshold)
    patches = ldct_pre.patches_reference(denoised, spacing, candidates[:, :3])
    probabilities = []
    for patch in patches:  # one patch at a time, and its left-right mirror
        for view in (patch, patch[..., ::-1]):
            seg = run1(models["ldct_nodule_segmenter"], "patch", np.ascontiguousarray(view[None, None]))
            probabilities.append(float(seg["malignancy"].ravel()[0]))
    return {"nodules": len(patches), "score": max(probabilities, default=0.0)}


def write_sr(out: Path, first: pydicom.Dataset, finding: dict) -> None:
    """A plain Basic Text SR with the score in a TEXT item: what a script writes, not TID 1500/4000."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr = pydicom.Dataset()
    sr.file_meta = meta
    sr.SOPClassUID, sr.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    sr.StudyInstanceUID = first.StudyInstanceUID
    sr.SeriesInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.ValueType = "CONTAINER"
    item = pydicom.Dataset()
    item.ValueType = "TEXT"
    item.TextValue = json.dumps(finding)
    sr.ContentSequence = [item]
    sr.save_as(out / f"{sr.SOPInstanceUID}.dcm", enforce_file_format=True)


def main(argv: list[str]) -> int:
    source, out = Path(argv[0]), Path(argv[1])
    same_work = "--same-work" in argv[2:]
    out.mkdir(parents=True, exist_ok=True)
    models = load_models()
    threshold = load_contract("ldct_nodule_detector", DEFAULT_MODEL_REPOSITORY).calibration["detection_threshold"]
    started = time.monotonic()
    studies: dict[str, list] = {}
    first_read: dict[str, float] = {}
    files = sorted(p for p in source.rglob("*.dcm") if "ground_truth" not in p.parts)
    nbytes = 0
    with (out / "naive.jsonl").open("w") as log:
        for path in files:  # the whole folder is read first: the script needs every instance of a study
            nbytes += path.stat().st_size
            ds = pydicom.dcmread(path)
            studies.setdefault(str(ds.StudyInstanceUID), []).append(ds)
            first_read.setdefault(str(ds.StudyInstanceUID), time.monotonic())
        for uid, datasets in studies.items():
            modality = str(datasets[0].Modality)
            if modality == "MG":
                finding = mammo_study(models, datasets)
            else:
                finding = ldct_study(models, datasets, threshold, same_work)
            write_sr(out, datasets[0], finding)
            log.write(json.dumps({"uid": uid, "modality": modality, "arrived": first_read[uid],
                                  "started": started, "finished": time.monotonic()}) + "\n")
    seconds = time.monotonic() - started
    print(json.dumps({"studies": len(studies), "instances": len(files), "bytes": nbytes, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
