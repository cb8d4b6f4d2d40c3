"""The served mammography classifier as an ensemble of two trained classifier networks
(``.venv-train/bin/python -m training.mammo_ensemble``).

Members (both ``ClassifierNet``, the same architecture and preprocessing, trained on different phantoms):
- ``mammo_classifier_2026-11-29.pt``: the classifier served alone until 2026-12-01 (training/mammo_train.py
  on the generator's phantoms; its weights were kept only in the exported ONNX graph, from which
  ``member_from_onnx`` recovered them exactly: the export had folded each batch norm into its convolution);
- ``mammo_classifier.pt``: the same training with the vendor randomisation (2026-12-01).

Each member keeps its own view Platt scaling (fitted on the full-size selection exams
FULL_VALIDATION_SEEDS, unmirrored views); the ensemble's view logit is the mean of the members'
calibrated logits and its lesion heatmap the mean of their heatmaps. The exported graph has the
single-classifier contract (same inputs, outputs, shapes). Then, as after any classifier export, the
region threshold is refitted on the validation heatmaps and the exam combination on the 800
exam-calibration exams (training/mammo_calibration.py).

Why: on the 800 exam-calibration exams (training-side seeds 95,100-95,899) the two members alone
reached exam AUC 0.891 and 0.893 through the served path, their logit mean 0.898 (0.896 / 0.905 on
each half); the exam combination features (breast mean, view max, heatmap, asymmetry, density) or
other test-time augmentations (shifts, no mirror) moved it by under 0.002.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from oncostream.settings import DEFAULT_MODEL_REPOSITORY
from training import mammo_data
from training.calibration import fit_logistic
from training.mammo_calibration import (exam_calibration_set, fit_exam_combination, load_calibration, log,
                                        served_view_probabilities, write_contracts)
from training.mammo_nets import ClassifierNet, ExportedEnsemble
from training.mammo_train import FULL_VALIDATION_SEEDS, VALIDATION_SEEDS, export, predict_classifier, region_threshold

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
MEMBERS = ("mammo_classifier_2026-11-29.pt", "mammo_classifier.pt")


def member_from_onnx(path: Path) -> tuple[ClassifierNet, float, float]:
    """A single-classifier export (mammo_train ``ExportedClassifier``) back to a ``ClassifierNet`` and
    its Platt (a, b): the graph's convolutions, in order, carry the weights with each batch norm folded
    in, so the batch norms become identities (mean 0, variance 1 - eps, scale 1) holding the bias."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    net = ClassifierNet()
    blocks = list(net.features)
    if len(convs) != len(blocks) + 1:
        raise ValueError(f"{path}: {len(convs)} convolutions, a ClassifierNet export has {len(blocks) + 1}")
    with torch.no_grad():
        for node, block in zip(convs, blocks):
            conv, norm = block[0], block[1]
            conv.weight.copy_(torch.tensor(values[node.input[1]]))
            norm.weight.fill_(1.0)
            norm.bias.copy_(torch.tensor(values[node.input[2]]))
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
        net.maps.weight.copy_(torch.tensor(values[convs[-1].input[1]]))
        net.maps.bias.copy_(torch.tensor(values[convs[-1].input[2]]))
    muls = [n for n in graph.node if n.op_type == "Mul" and n.input[1] in values]
    adds = [n for n in graph.node if n.op_type == "Add" and n.input[1] in values]
    a, b = float(values[muls[-1].input[1]]), float(values[adds[-1].input[1]])
    return net.eval(), a, b


def load_member(name: str) -> ClassifierNet:
    payload = torch.load(CHECKPOINTS / name, map_location="cpu", weights_only=False)
    net = ClassifierNet()
    net.load_state_dict(payload["weights"])
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--workers", type=int, default=mammo_data.default_workers())
    args = parser.parse_args(argv)
    repo = args.repository
    selection = mammo_data.load(mammo_data.build(FULL_VALIDATION_SEEDS, "full", args.workers))
    nets, platts = [], []
    for name in MEMBERS:
        net = load_member(name)
        a, b = fit_logistic(predict_classifier(net, selection.images)[:, None], selection.view_malignant)
        log(f"member {name}: view Platt a={a:.3f} b={b:.3f}")
        nets.append(net)
        platts.append((float(a), float(b)))
    export(ExportedEnsemble(nets, platts), repo / "mammo_classifier" / "1" / "model.onnx", ["malignancy", "heatmap"])
    val = mammo_data.load(mammo_data.build(VALIDATION_SEEDS, "small", args.workers)
                          + mammo_data.build(FULL_VALIDATION_SEEDS, "full", args.workers))
    _, heatmaps, _ = served_view_probabilities(repo, val.images)
    calibration = {**{f"view_platt_{p}_{k}": v for k, (a, b) in enumerate(platts) for p, v in (("a", a), ("b", b))},
                   "region_threshold": region_threshold(heatmaps, val.lesion),
                   **fit_exam_combination(repo, exam_calibration_set(args.workers))}
    write_contracts(repo, calibration, load_calibration(repo, "mammo_density"))
    log(f"ensemble of {len(nets)} classifiers exported to {repo}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
