"""Train, calibrate and export the two mammography models (``python -m training.mammo_train``).

Seeds (all training-side, below the evaluation range that starts at 1,000,000):
- training:    small phantoms TRAIN_SEEDS, full phantoms FULL_TRAIN_SEEDS
- validation:  full phantoms FULL_VALIDATION_SEEDS select the classifier (exam AUC) and fit the view
               Platt scaling; with the small phantoms VALIDATION_SEEDS they fit the density
               temperature and the region threshold;
- exam calibration: full phantoms EXAM_CALIBRATION_SEEDS (training/mammo_calibration.py) fit the exam combination and the
               exam-score decile edges (full size is what screening sends; fitting them on the mostly
               small validation set left the full-size exam probability miscalibrated).

Outputs: model_repository/mammo_classifier/{contract.yaml,1/model.onnx} and the same for
mammo_density. The served classifier is the ensemble training/mammo_ensemble.py builds from this
classifier's checkpoint and the committed 2026-11-29 one (``make models`` runs it next); run alone,
this script leaves the single classifier in the repository. The model cards (README.md) are written
by hand from ``oncostream eval`` figures.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from oncostream.evaluation.mammo import cohen_kappa, roc_auc
from oncostream.settings import DEFAULT_MODEL_REPOSITORY
from training import checkpoints, mammo_data
from training.mammo_calibration import (exam_calibration_set, fit_exam_combination, load_calibration, log,
                                        recalibrate_exam, served_view_probabilities, write_contracts)
from training.calibration import fit_logistic, fit_temperature
from training.mammo_nets import ClassifierNet, DensityNet, ExportedClassifier, ExportedDensity, view_logit

TRAIN_SEEDS = range(0, 1600)
FULL_TRAIN_SEEDS = range(50_000, 50_600)
VALIDATION_SEEDS = range(90_000, 90_400)
FULL_VALIDATION_SEEDS = range(95_000, 95_100)
TORCH_SEED = 20261128
OPSET = 17
FULL_SHARE = 0.5


def _batches(n: int, batch: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n - batch + 1, batch):
        yield np.sort(order[start:start + batch])


def _augment(x: np.ndarray, maps: list[np.ndarray], rng: np.random.Generator):
    """Up-down mirror (the symmetry test-time augmentation uses) and a mild contrast jitter."""
    flip = rng.random(len(x)) < 0.5
    x[flip] = x[flip, ::-1, :]
    maps = [m.copy() for m in maps]
    for m in maps:
        m[flip] = m[flip, ::-1, :]
    gain = rng.uniform(0.9, 1.1, size=(len(x), 1, 1)).astype(np.float32)
    return x * gain, maps


def _pos_weight(targets: np.ndarray, cap: float) -> torch.Tensor:
    positives = max(float(targets.mean()), 1e-6)
    return torch.tensor(min((1 - positives) / positives, cap))


def predict_classifier(net: ClassifierNet, images, batch: int = 32) -> np.ndarray:
    """View logits (uncalibrated) for every view of ``images`` (no augmentation)."""
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            idx = np.arange(start, min(start + batch, len(images)))
            _, mal = net(torch.from_numpy(images.take(idx))[:, None])
            out.append(view_logit(mal).numpy())
    return np.concatenate(out)


CROP_CELLS = (16, 13)  # training crops: 256 x 208 pixels, aligned to the 16-pixel heatmap grid
LESION_CROP_FRACTION = 0.6  # share of crops centred on a lesion cell (when the view has one)


def _crop_origins(lesion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Crop origins in grid cells [N, 2]: around a random lesion cell, else anywhere."""
    grid_r, grid_c = lesion.shape[1:]
    span_r, span_c = grid_r - CROP_CELLS[0], grid_c - CROP_CELLS[1]
    origins = np.stack([rng.integers(0, span_r + 1, len(lesion)), rng.integers(0, span_c + 1, len(lesion))], 1)
    for k, cells in enumerate(lesion):
        hits = np.argwhere(cells)
        if len(hits) and rng.random() < LESION_CROP_FRACTION:
            r, c = hits[rng.integers(len(hits))]
            origins[k, 0] = np.clip(r - rng.integers(2, CROP_CELLS[0] - 2), 0, span_r)
            origins[k, 1] = np.clip(c - rng.integers(2, CROP_CELLS[1] - 2), 0, span_c)
    return origins


def _crops(train: mammo_data.MammoExamples, idx: np.ndarray, rng: np.random.Generator):
    """Grid-aligned crops of the views ``idx`` and their targets (a crop is malignant when it holds a
    malignant-lesion cell)."""
    origins = _crop_origins(train.lesion[idx], rng)
    images = train.images.take(idx)
    h, w = CROP_CELLS
    x = np.empty((len(idx), 16 * h, 16 * w), np.float32)
    les = np.empty((len(idx), h, w), np.uint8)
    mal = np.empty((len(idx), h, w), np.uint8)
    for k, (r, c) in enumerate(origins):
        x[k] = images[k, 16 * r:16 * (r + h), 16 * c:16 * (c + w)]
        les[k] = train.lesion[idx[k], r:r + h, c:c + w]
        mal[k] = train.malignant_map[idx[k], r:r + h, c:c + w]
    return x, les, mal


def train_classifier(train: mammo_data.MammoExamples, val: mammo_data.MammoExamples, steps: int,
                     weights: np.ndarray | None = None, batch: int = 32, lr: float = 2e-3,
                     validate_every: int = 300, key: str = "") -> ClassifierNet:
    """Fully convolutional training on grid-aligned crops (4x cheaper than whole views on this CPU);
    views drawn with probability ``weights``; model selection by validation exam AUC on whole views.
    Resumable from its checkpoint (training/checkpoints.py) when ``key`` names the data."""
    rng = np.random.default_rng(TORCH_SEED)
    net = ClassifierNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    bce_lesion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(5.0))
    bce_map = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(5.0))
    bce_view = nn.BCEWithLogitsLoss()
    progress = checkpoints.Progress("mammo_classifier", key, net, opt, sched, rng, enabled=bool(key),
                                    extra={"best": -1.0, "best_state": None})
    best, best_state = progress.extra["best"], progress.extra["best_state"]
    t0, total = time.time(), 0.0
    for step in range(progress.step + 1, steps + 1):
        net.train()
        idx = np.sort(rng.choice(len(train), batch, replace=False, p=weights))
        x, les, mal = _crops(train, idx, rng)
        x, (les, mal) = _augment(x, [les, mal], rng)
        lesion_logits, mal_map = net(torch.from_numpy(np.ascontiguousarray(x))[:, None])
        view_target = torch.from_numpy(mal.reshape(len(mal), -1).max(axis=1)).float()
        loss = (bce_lesion(lesion_logits[:, 0], torch.from_numpy(les).float())
                + bce_map(mal_map[:, 0], torch.from_numpy(mal).float())
                + bce_view(view_logit(mal_map), view_target))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item()
        if step % validate_every == 0 or step == steps:
            logits = predict_classifier(net, val.images)
            view_auc = roc_auc(logits, val.view_malignant)
            exam_auc = roc_auc(logits.reshape(-1, 4).max(axis=1), val.exam_malignant)
            log(f"classifier step {step}/{steps}: loss {total / validate_every:.4f} val view AUC {view_auc:.3f} "
                f"exam AUC (max) {exam_auc:.3f} ({time.time() - t0:.0f} s)")
            total = 0.0
            if exam_auc > best:
                best, best_state = exam_auc, {k: v.clone() for k, v in net.state_dict().items()}
                progress.extra.update(best=best, best_state=best_state)
        progress.tick(step)
    net.load_state_dict(best_state)
    return net.eval()


def train_density(train: mammo_data.MammoExamples, val: mammo_data.MammoExamples, epochs: int,
                  batch: int = 32, lr: float = 3e-3) -> DensityNet:
    rng = np.random.default_rng(TORCH_SEED + 1)
    net = DensityNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(train) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    ce = nn.CrossEntropyLoss()
    best, best_state = -1.0, None
    for epoch in range(epochs):
        net.train()
        t0 = time.time()
        for idx in _batches(len(train), batch, rng):
            x, _ = _augment(train.images.take(idx), [], rng)
            loss = ce(net(torch.from_numpy(np.ascontiguousarray(x))[:, None]), torch.from_numpy(train.density[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        logits = predict_density(net, val.images)
        exam_pred = logits.reshape(-1, 4, 4).mean(axis=1).argmax(axis=1)
        kappa = cohen_kappa(exam_pred, val.density[::4])
        log(f"density epoch {epoch + 1}/{epochs}: val exam kappa {kappa:.3f} ({time.time() - t0:.0f} s)")
        if kappa > best:
            best, best_state = kappa, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net.eval()


def predict_density(net: DensityNet, images, batch: int = 64) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            idx = np.arange(start, min(start + batch, len(images)))
            out.append(net(torch.from_numpy(images.take(idx))[:, None]).numpy())
    return np.concatenate(out)


def export(module: nn.Module, path: Path, outputs: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 1, *mammo_data.MODEL_SHAPE)
    torch.onnx.export(module.eval(), (dummy,), str(path), input_names=["image"], output_names=outputs,
                      dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                      opset_version=OPSET, dynamo=False)


def region_threshold(heatmaps: np.ndarray, lesion: np.ndarray) -> float:
    """Heatmap threshold with the best cell-level F1 against the lesion cells of the validation views."""
    best, best_f1 = 0.5, -1.0
    for threshold in np.arange(0.3, 0.96, 0.05):
        hit = heatmaps >= threshold
        tp = float((hit & (lesion > 0)).sum())
        f1 = 2 * tp / max(1.0, hit.sum() + (lesion > 0).sum())
        if f1 > best_f1:
            best, best_f1 = float(threshold), f1
    log(f"region threshold {best:.2f} (validation cell F1 {best_f1:.3f})")
    return round(best, 2)


def _stage_key(stage: str, args: argparse.Namespace) -> str:
    """What a mammography stage's checkpoint was trained on (phantoms' fingerprint, seeds, schedule)."""
    seeds = (f"train{args.train_exams}-full{args.full_exams}-val{args.val_exams}-fullval{args.full_val_exams}-"
             f"vendors{mammo_data.CACHE_VERSION}")
    schedule = f"steps{args.steps}" if stage == "mammo_classifier" else f"epochs{args.density_epochs}"
    return "/".join([stage, mammo_data.fingerprint(), seeds, f"torch{TORCH_SEED}", schedule])


def _trained(stage: str, args: argparse.Namespace, net: nn.Module, train) -> nn.Module:
    """The stage's finished weights from the checkpoints, or ``train(key)``'s, kept there."""
    key = _stage_key(stage, args)
    weights = checkpoints.finished(stage, key)
    if weights is not None:
        log(f"{stage}: finished weights from the checkpoints")
        net.load_state_dict(weights)
        return net.eval()
    net = train(key)
    checkpoints.save_finished(stage, key, net)
    return net


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-exams", type=int, default=len(TRAIN_SEEDS))
    parser.add_argument("--full-exams", type=int, default=len(FULL_TRAIN_SEEDS))
    parser.add_argument("--val-exams", type=int, default=len(VALIDATION_SEEDS))
    parser.add_argument("--full-val-exams", type=int, default=len(FULL_VALIDATION_SEEDS))
    parser.add_argument("--steps", type=int, default=12000, help="classifier steps of 32 crops")
    parser.add_argument("--density-epochs", type=int, default=2)
    parser.add_argument("--keep-density", action="store_true",
                        help="retrain only the classifier; keep mammo_density already in --repository")
    parser.add_argument("--workers", type=int, default=mammo_data.default_workers())
    parser.add_argument("--exam-calibration-only", action="store_true",
                        help="only refit the exam combination of the models already in --repository")
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    args = parser.parse_args(argv)
    torch.manual_seed(TORCH_SEED)
    started = time.time()
    if args.exam_calibration_only:
        recalibrate_exam(args.repository, args.workers)
        return 0

    train_range = range(TRAIN_SEEDS.start, TRAIN_SEEDS.start + args.train_exams)
    full_range = range(FULL_TRAIN_SEEDS.start, FULL_TRAIN_SEEDS.start + args.full_exams)
    val_range = range(VALIDATION_SEEDS.start, VALIDATION_SEEDS.start + args.val_exams)
    log(f"phantoms: train small {train_range}, train full {full_range}, validation small {val_range}, "
        f"validation full {FULL_VALIDATION_SEEDS.start}+{args.full_val_exams}")
    small_folders = mammo_data.build(train_range, "small", args.workers, randomise=True)
    full_folders = mammo_data.build(full_range, "full", args.workers, randomise=True) if len(full_range) else []
    train = mammo_data.load(small_folders + full_folders)
    # Full-size views (what screening sends; downsampled 4x, so less noisy than native small ones and
    # with finer lesion texture) make FULL_SHARE of the crops.
    n_full = 4 * len(full_range)
    weights = np.full(len(train), (1 - FULL_SHARE) / max(1, len(train) - n_full))
    if n_full:
        weights[-n_full:] = FULL_SHARE / n_full
    weights /= weights.sum()
    val_folders = mammo_data.build(val_range, "small", args.workers)
    full_val_range = range(FULL_VALIDATION_SEEDS.start, FULL_VALIDATION_SEEDS.start + args.full_val_exams)
    full_val_folders = mammo_data.build(full_val_range, "full", args.workers) if len(full_val_range) else []
    val = mammo_data.load(val_folders + full_val_folders)
    # model selection and the view Platt scaling on full-size exams (what screening sends)
    val_selection = mammo_data.load(full_val_folders or val_folders[:2])
    log(f"{len(train)} training views, {len(val)} validation views ready ({time.time() - started:.0f} s)")

    classifier = _trained("mammo_classifier", args, ClassifierNet(),
                          lambda key: train_classifier(train, val_selection, args.steps, weights, key=key))
    repo = args.repository
    # Calibration on the validation split: Platt scaling of the view logit, temperature of density.
    a, b = fit_logistic(predict_classifier(classifier, val_selection.images)[:, None], val_selection.view_malignant)
    log(f"view Platt a={a:.3f} b={b:.3f}")
    export(ExportedClassifier(classifier, float(a), float(b)), repo / "mammo_classifier" / "1" / "model.onnx",
           ["malignancy", "heatmap"])
    if args.keep_density:
        temperature = load_calibration(repo, "mammo_density")["temperature"]
    else:
        density = _trained("mammo_density", args, DensityNet(),
                           lambda key: train_density(train, val_selection, args.density_epochs))
        temperature = fit_temperature(predict_density(density, val.images), val.density)
        log(f"density temperature {temperature:.3f}")
        export(ExportedDensity(density, temperature), repo / "mammo_density" / "1" / "model.onnx", ["density"])

    # Region threshold on the validation heatmaps; exam combination and decile edges on full-size
    # exams (what screening sends), both on the served path (ONNX Runtime + flip TTA).
    _, heatmaps, _ = served_view_probabilities(repo, val.images)
    classifier_calibration = {"view_platt_a": float(a), "view_platt_b": float(b),
                              "region_threshold": region_threshold(heatmaps, val.lesion),
                              **fit_exam_combination(repo, exam_calibration_set(args.workers))}
    write_contracts(repo, classifier_calibration, {"temperature": float(temperature)})
    log(f"exported to {repo} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
