"""Train the three LDCT models on cached phantom items and export them to model_repository/.

Run from the project root: ``.venv-train/bin/python -m training.ldct_train`` (``make models`` runs it
through training.train_all). Deterministic for the fixed seeds below on one machine; torch's CPU
kernels may differ in the last bits across machines.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import logit
from torch.nn import functional as F

from oncostream.model_contract import record_calibration, record_weights
from training import checkpoints, ldct_data
from training.calibration import fit_logistic, fit_temperature
from training.ldct_models import (CalibratedDetector, CalibratedSegmenter, DenoiseNet, DetectorNet,
                                  SegmenterNet, export_onnx)

# ONCOSTREAM_EXPORT_REPOSITORY: export into a copy of the repository instead (a candidate release,
# evaluated before it replaces model_repository/)
REPOSITORY = Path(os.environ.get("ONCOSTREAM_EXPORT_REPOSITORY", Path(__file__).resolve().parent.parent / "model_repository"))
TORCH_SEED = 20261128
PATCH = 48
DET_PATCH = 40
# steps per model; ONCOSTREAM_LDCT_STEPS_SCALE shortens every schedule (quick smoke runs)
STEPS = {"denoise": 3600, "detector": 4000, "detector_refine": 1500, "segmenter": 4800}
VOLUME_KINDS = ("clean", "full", "low")
VOLUME_KIND_P = (0.25, 0.35, 0.40)


def _steps(name: str) -> int:
    return max(1, int(STEPS[name] * float(os.environ.get("ONCOSTREAM_LDCT_STEPS_SCALE", "1"))))


class _Schedule:
    """One-cycle learning rate over a fixed number of steps (deterministic: what ``make models``
    uses) or, when ONCOSTREAM_LDCT_TIME_BUDGET_S is set, over wall time (quick interim models on a
    crowded machine; not reproducible)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_lr: float, steps: int):
        self.optimizer = optimizer
        self.max_lr = max_lr
        self.steps = steps
        budget = os.environ.get("ONCOSTREAM_LDCT_TIME_BUDGET_S")
        self.budget_s = float(budget) if budget else None
        self.start = time.time()
        self.step_count = 0

    def progress(self) -> float:
        if self.budget_s is not None:
            return min(1.0, (time.time() - self.start) / self.budget_s)
        return min(1.0, self.step_count / self.steps)

    def running(self) -> bool:
        return self.progress() < 1.0

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]

    def resumable(self) -> bool:
        """Only a step-counted schedule can be resumed from a checkpoint (a wall-time one cannot)."""
        return self.budget_s is None

    def step(self) -> None:
        """Set the learning rate for the next step: 10 % linear warm-up, then cosine to zero."""
        self.step_count += 1
        p = self.progress()
        factor = p / 0.1 if p < 0.1 else 0.5 * (1 + math.cos(math.pi * (p - 0.1) / 0.9))
        for group in self.optimizer.param_groups:
            group["lr"] = self.max_lr * max(factor, 0.02)


def _log(**fields) -> None:
    print(json.dumps(fields), flush=True)


# --- denoise ----------------------------------------------------------------------------------

def train_denoise(items: list[dict], steps: int, rng: np.random.Generator, key: str) -> DenoiseNet:
    """Pairs (25 % dose slice, noiseless slice) as HU / 1000; mean squared error (PSNR's own loss)."""
    lows = np.concatenate([it["den_low"] for it in items])
    cleans = np.concatenate([it["den_clean"] for it in items])
    # full-size crops (0.7 mm pixels, where the PSNR target is set) drawn three times as often
    # as small-size ones, whose coarse pixels average most of the noise away already
    fine = np.concatenate([np.full(len(it["den_low"]), float(it["spacing"][1]) < 1.5) for it in items])
    weights = np.where(fine, 3.0, 1.0) if fine.any() else np.ones(len(fine))
    weights /= weights.sum()
    net = DenoiseNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = _Schedule(opt, 1e-3, steps)
    progress = checkpoints.Progress("ldct_denoise", key, net, opt, sched, rng, sched.resumable())
    crop, batch = 64, 16
    while sched.running():
        sched.step()
        idx = rng.choice(len(lows), size=batch, p=weights)
        xs, ys = [], []
        for i in idx:
            h, w = lows[i].shape
            y0 = int(rng.integers(0, h - crop + 1)) & ~1
            x0 = int(rng.integers(0, w - crop + 1)) & ~1
            a, b = lows[i][y0:y0 + crop, x0:x0 + crop], cleans[i][y0:y0 + crop, x0:x0 + crop]
            if rng.random() < 0.5:
                a, b = a[:, ::-1], b[:, ::-1]
            xs.append(a)
            ys.append(b)
        x = torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, None]))
        y = torch.from_numpy(np.ascontiguousarray(np.stack(ys)[:, None]))
        loss = F.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched.step_count % 250 == 1:
            _log(model="ldct_denoise", step=sched.step_count, rmse_hu=round(math.sqrt(loss.item()) * 1000, 2))
        progress.tick(sched.step_count)
    return net.eval()


# --- detector ---------------------------------------------------------------------------------

def _heatmap_target(shape: tuple[int, int, int], origin: np.ndarray, centres: np.ndarray,
                    diameters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian centre heatmap (1 at each centre's nearest voxel), diameter target and its weight."""
    heat = np.zeros(shape, np.float32)
    diam = np.zeros(shape, np.float32)
    weight = np.zeros(shape, np.float32)
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    for c, d in zip(centres, diameters):
        local = c - origin
        sigma = max(0.8, d / 8.0)  # grid voxels are 2 mm: the radius in voxels over two
        r2 = (zz - local[0]) ** 2 + (yy - local[1]) ** 2 + (xx - local[2]) ** 2
        heat = np.maximum(heat, np.exp(-r2 / (2 * sigma * sigma)))
        near = r2 <= max(1.5, d / 8.0) ** 2
        diam[near] = d
        weight[near] = 1.0
        peak = np.round(local).astype(int)
        if all(0 <= peak[a] < shape[a] for a in range(3)):
            heat[tuple(peak)] = 1.0
    return heat, diam, weight


def _detector_batch(items: list[dict], rng: np.random.Generator, batch: int,
                    hard: dict[str, list[tuple[int, np.ndarray]]] | None = None):
    """Patches around a nodule (60 %) or anywhere; with ``hard`` (mine_hard_examples), HARD_SHARE of
    them around a hard negative and as many around a hard positive instead."""
    xs, heats, diams, weights = [], [], [], []
    n = DET_PATCH
    for _ in range(batch):
        focus = None
        draw = rng.random()
        pool = (hard or {}).get("negative" if draw < HARD_SHARE else "positive" if draw < 2 * HARD_SHARE else "")
        if pool:
            i, focus = pool[int(rng.integers(len(pool)))]
            it = items[i]
        else:
            it = items[int(rng.integers(len(items)))]
        kind = VOLUME_KINDS[int(rng.choice(3, p=VOLUME_KIND_P))]
        vol = it[f"det_{kind}"]
        shape = np.array(vol.shape)
        centres = it["det_centres"]
        if focus is None and len(centres) and rng.random() < 0.6:
            focus = centres[int(rng.integers(len(centres)))]
        if focus is not None:
            start = np.round(focus - n / 2 + rng.uniform(-n / 3, n / 3, 3)).astype(int)
        else:
            start = np.array([rng.integers(0, max(1, s - n + 1)) for s in shape])
        start = np.clip(start, 0, np.maximum(shape - n, 0))
        sl = tuple(slice(int(s), int(s) + n) for s in start)
        x = np.full((n, n, n), -1.0, np.float32)
        sub = vol[sl].astype(np.float32)
        x[:sub.shape[0], :sub.shape[1], :sub.shape[2]] = sub
        heat, diam, weight = _heatmap_target((n, n, n), start.astype(np.float32), centres, it["diameters"])
        if rng.random() < 0.5:  # left-right mirror
            x, heat, diam, weight = x[..., ::-1], heat[..., ::-1], diam[..., ::-1], weight[..., ::-1]
        xs.append(x)
        heats.append(heat)
        diams.append(diam)
        weights.append(weight)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(np.stack(a)[:, None]))  # noqa: E731
    return as_t(xs), as_t(heats), as_t(diams), as_t(weights)


def centre_focal_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on a Gaussian centre heatmap."""
    p = torch.sigmoid(logit).clamp(1e-5, 1 - 1e-5)
    pos = target >= 0.999
    pos_loss = -(torch.log(p) * (1 - p) ** 2)[pos].sum()
    neg_loss = -(torch.log(1 - p) * p ** 2 * (1 - target) ** 4)[~pos].sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1)


def train_detector(items: list[dict], steps: int, rng: np.random.Generator, key: str) -> DetectorNet:
    """The base schedule (refine_detector follows it in train_one)."""
    net = DetectorNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = _Schedule(opt, 2e-3, steps)
    progress = checkpoints.Progress("ldct_detector_base", key, net, opt, sched, rng, sched.resumable())
    _fit_detector(net, opt, sched, lambda: _detector_batch(items, rng, batch=6), progress)
    return net.eval()


def _fit_detector(net: DetectorNet, opt: torch.optim.Optimizer, sched: _Schedule, next_batch,
                  progress: checkpoints.Progress) -> None:
    while sched.running():
        sched.step()
        x, heat, diam, weight = next_batch()
        logit, diameter = net(x)
        focal = centre_focal_loss(logit, heat)
        size = ((torch.log(diameter + 1.0) - torch.log(diam + 1.0)).abs() * weight).sum() / weight.sum().clamp(min=1)
        loss = focal + size
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched.step_count % 50 == 1:
            _log(model="ldct_nodule_detector", step=sched.step_count, focal=round(focal.item(), 4),
                 size=round(size.item(), 4))
        progress.tick(sched.step_count)


# Hard-example refinement of the detector: after the base schedule the detector runs over every
# training volume; its false-positive peaks (vessel crossings, mediastinal edges) and the nodules it
# scores low (small juxtavascular and faint ground-glass ones) are oversampled in a short second
# schedule at a lower learning rate.
HARD_FLOOR = 0.2  # false-positive peaks at or above this score are hard negatives
HARD_POSITIVE_BELOW = 0.5  # nodules whose heatmap stays below this near their centre are hard positives
HARD_SHARE = 0.25  # share of refinement patches centred on a hard negative, and again on a hard positive
REFINE_LR = 5e-4


def detector_heatmap(net: DetectorNet, volume: np.ndarray) -> np.ndarray:
    """Centre probabilities of a windowed 2 mm volume (padded to edges that are multiples of 4)."""
    pad = (-np.array(volume.shape)) % 4
    x = np.pad(volume.astype(np.float32), [(0, int(p)) for p in pad], constant_values=-1.0)
    with torch.no_grad():
        logit, _ = net.eval()(torch.from_numpy(x)[None, None])
    d, h, w = volume.shape
    return torch.sigmoid(logit)[0, 0, :d, :h, :w].numpy()


def mine_hard_examples(net: DetectorNet, items: list[dict]) -> dict[str, list[tuple[int, np.ndarray]]]:
    """(item index, centre on the detector grid) of every hard negative and hard positive, found on
    the full-dose volumes (at 2 mm the nearest to the denoised volumes the detector is served)."""
    from scipy import ndimage

    from ingest.steps.ldct import PEAK_NEIGHBOURHOOD
    from oncostream.evaluation.ldct import match_radius_mm

    hard: dict[str, list[tuple[int, np.ndarray]]] = {"negative": [], "positive": []}
    for i, it in enumerate(items):
        heat = detector_heatmap(net, it["det_full"])
        centres = it["det_centres"]
        radius_mm = np.array([match_radius_mm(d) for d in it["diameters"]])
        peaks = (heat == ndimage.maximum_filter(heat, size=PEAK_NEIGHBOURHOOD, mode="constant")) & (heat >= HARD_FLOOR)
        for peak in np.argwhere(peaks).astype(np.float32):
            distance_mm = np.linalg.norm(centres - peak, axis=1) * 2.0  # grid voxels are 2 mm
            if not (distance_mm <= radius_mm).any():
                hard["negative"].append((i, peak))
        for c in centres:
            lo = np.maximum(np.round(c).astype(int) - 2, 0)
            near = heat[lo[0]:lo[0] + 5, lo[1]:lo[1] + 5, lo[2]:lo[2] + 5]
            if near.size and near.max() < HARD_POSITIVE_BELOW:
                hard["positive"].append((i, c))
    _log(model="ldct_nodule_detector", stage="hard examples", volumes=len(items), negatives=len(hard["negative"]),
         positives=len(hard["positive"]), nodules=int(sum(len(it["det_centres"]) for it in items)))
    return hard


def refine_detector(net: DetectorNet, items: list[dict], steps: int, key: str) -> DetectorNet:
    """Second schedule on hard examples (above); its own seeds, so refining a saved base detector
    gives what one ``train_one("detector")`` run gives. The hard examples are mined from the base
    detector again when the schedule resumes from a checkpoint."""
    hard = mine_hard_examples(net, items)
    torch.manual_seed(TORCH_SEED + 1)
    rng = np.random.default_rng([TORCH_SEED, 1])
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=REFINE_LR)
    sched = _Schedule(opt, REFINE_LR, steps)
    progress = checkpoints.Progress("ldct_detector", key, net, opt, sched, rng, sched.resumable())
    _fit_detector(net, opt, sched, lambda: _detector_batch(items, rng, batch=6, hard=hard), progress)
    return net.eval()


# --- segmenter --------------------------------------------------------------------------------

def _segmenter_batch(items: list[dict], rng: np.random.Generator, batch: int, jitter_mm: float = 5.0):
    xs, masks, malignant, composition, margins, positive = [], [], [], [], [], []
    big = ldct_data.BIG_PATCH
    margin = (big - PATCH) // 2
    # every nodule (and every negative cube) equally likely, whatever phantom holds it
    counts = {want: np.array([np.count_nonzero(it["seg_positive"] == want) for it in items], np.float64)
              for want in (True, False)}
    for j in range(batch):
        want_positive = j % 2 == 0
        it = items[int(rng.choice(len(items), p=counts[want_positive] / counts[want_positive].sum()))]
        pool = np.flatnonzero(it["seg_positive"] == want_positive)
        k = int(pool[int(rng.integers(len(pool)))])
        kind = VOLUME_KINDS[int(rng.choice(3, p=VOLUME_KIND_P))]
        reach = jitter_mm if want_positive else margin
        o = np.clip(np.round(margin + rng.uniform(-reach, reach, 3)).astype(int), 0, big - PATCH)
        sl = tuple(slice(int(s), int(s) + PATCH) for s in o)
        x = it[f"seg_{kind}"][k][sl].astype(np.float32)
        m = it["seg_mask"][k][sl].astype(np.float32) / 255.0
        if rng.random() < 0.5:
            x, m = x[..., ::-1], m[..., ::-1]
        if rng.random() < 0.5:
            x, m = x[::-1], m[::-1]
        xs.append(x)
        masks.append(m)
        positive.append(want_positive)
        malignant.append(float(it["malignant"][k]) if want_positive else 0.0)
        composition.append(int(it["composition"][k]) if want_positive else 0)
        margins.append(int(it["margin"][k]) if want_positive and "margin" in it else -1)
    return (torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, None])),
            torch.from_numpy(np.ascontiguousarray(np.stack(masks)[:, None])),
            torch.tensor(malignant)[:, None], torch.tensor(composition), torch.tensor(margins), torch.tensor(positive))


def soft_dice_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logit)
    inter = (p * target).sum(dim=(1, 2, 3, 4))
    return (1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3, 4)) + target.sum(dim=(1, 2, 3, 4)) + 1)).mean()


def train_segmenter(items: list[dict], steps: int, rng: np.random.Generator, key: str) -> SegmenterNet:
    net = SegmenterNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-5)
    sched = _Schedule(opt, 3e-3, steps)
    progress = checkpoints.Progress("ldct_segmenter", key, net, opt, sched, rng, sched.resumable())
    while sched.running():
        sched.step()
        x, mask, malignant, composition, margin, positive = _segmenter_batch(items, rng, batch=8)
        mask_logit, mal_logit, comp_logits, margin_logits = net(x)
        bce = F.binary_cross_entropy_with_logits(mask_logit, mask, pos_weight=torch.tensor(5.0))
        dice = soft_dice_loss(mask_logit[positive], mask[positive])
        mal = F.binary_cross_entropy_with_logits(mal_logit[positive], malignant[positive])
        comp = F.cross_entropy(comp_logits[positive], composition[positive])
        # auxiliary: the margin (smooth / lobulated / spiculated) the malignancy mostly rests on
        known = margin >= 0
        marg = F.cross_entropy(margin_logits[known], margin[known]) if known.any() else mal * 0
        loss = bce + 2 * dice + 0.5 * mal + 0.5 * comp + 0.5 * marg
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched.step_count % 50 == 1:
            _log(model="ldct_nodule_segmenter", step=sched.step_count, bce=round(bce.item(), 4),
                 dice=round(dice.item(), 4), malignancy=round(mal.item(), 4), composition=round(comp.item(), 4),
                 margin=round(marg.item(), 4))
        progress.tick(sched.step_count)
    return net.eval()


def validation_logits(net: SegmenterNet, items: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Malignancy and composition logits of every validation nodule (25 % dose, centred, full-dose too)."""
    big = ldct_data.BIG_PATCH
    o = (big - PATCH) // 2
    xs, mal, comp = [], [], []
    for it in items:
        for k in np.flatnonzero(it["seg_positive"]):
            for kind in ("low", "full"):
                xs.append(it[f"seg_{kind}"][k][o:o + PATCH, o:o + PATCH, o:o + PATCH].astype(np.float32))
                mal.append(it["malignant"][k])
                comp.append(it["composition"][k])
    if not xs:
        return np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros(0)
    out_mal, out_comp = [], []
    with torch.no_grad():
        for start in range(0, len(xs), 8):
            _, m, c, _ = net(torch.from_numpy(np.stack(xs[start:start + 8])[:, None]))
            out_mal.append(m[:, 0].numpy())
            out_comp.append(c.numpy())
    return np.concatenate(out_mal), np.asarray(mal), np.concatenate(out_comp), np.asarray(comp)


def export_all(denoise: DenoiseNet, detector: DetectorNet, segmenter: SegmenterNet,
               segmenter_calibration: dict[str, float], repository: Path = REPOSITORY) -> None:
    export_onnx(denoise, torch.zeros(1, 1, 64, 64), repository / "ldct_denoise" / "1" / "model.onnx",
                "image", ["denoised"], dynamic_spatial=True)
    export_onnx(CalibratedDetector(detector), torch.zeros(1, 1, 32, 32, 32),
                repository / "ldct_nodule_detector" / "1" / "model.onnx", "volume", ["heatmap", "diameter_mm"],
                dynamic_spatial=True)
    record_weights("ldct_denoise", repository)
    record_weights("ldct_nodule_detector", repository)
    export_segmenter(segmenter, segmenter_calibration, repository)


def export_segmenter(segmenter: SegmenterNet, calibration: dict[str, float], repository: Path = REPOSITORY) -> None:
    export_onnx(CalibratedSegmenter(segmenter, **calibration), torch.zeros(1, 1, PATCH, PATCH, PATCH),
                repository / "ldct_nodule_segmenter" / "1" / "model.onnx", "patch",
                ["mask", "malignancy", "composition"], dynamic_spatial=False)
    record_weights("ldct_nodule_segmenter", repository)
    # the thick-slice recalibration was fitted on the previous weights' probabilities: drop it (refit
    # with training/thick_calibration.py)
    record_calibration("ldct_nodule_segmenter", {}, repository)


# Served-path calibration set: full-size phantoms with the generator's natural nodule draw, never
# trained on (training seeds 0-499 and 10 000-10 159, validation 90 000-90 139) and below the
# evaluation range (1 000 000+). Candidates are taken down to CALIBRATION_FLOOR so that the
# detector's 1 false positive per scan point can be read off.
CALIBRATION_SEEDS = range(96_000, 96_096)
CALIBRATION_FLOOR = 0.1


def calibrate_served(segmenter: SegmenterNet, calibration: dict[str, float], seeds: range = CALIBRATION_SEEDS) -> dict[str, float]:
    """Run the exported models the way the pipeline serves them (oncostream.evaluation.ldct) on the
    calibration phantoms; read off the detection score at 1 false positive per scan, rounded down
    to 0.01, as the detector's operating point (its contract's ``calibration.detection_threshold``),
    and fold a Platt fit of the served malignancy probability of every true nodule reported at that
    operating point into the segmenter's calibration; export it again."""
    from oncostream.evaluation import ldct as evaluation

    run_model = evaluation.LdctModels(REPOSITORY)
    series = []
    for seed in seeds:
        series.append(evaluation.score_series(seed, "full", run_model, threshold=CALIBRATION_FLOOR))
        _log(stage="calibration series", seed=seed, reported=len(series[-1].hit))
    scores = np.concatenate([s.detection_score for s in series])
    is_tp = np.concatenate([[j >= 0 and s.reportable[j] for j in s.hit] for s in series]).astype(bool)
    is_fp = np.concatenate([s.hit < 0 for s in series])
    n_positive = sum(int(s.reportable.sum()) for s in series)
    sensitivity, at_1fp = evaluation.sensitivity_at_fp_rate(scores, is_tp, is_fp, n_positive, len(series))
    operating_point = math.floor(at_1fp * 100) / 100
    reported = [(s.hit >= 0) & (s.detection_score >= operating_point) for s in series]
    p = np.concatenate([s.malignancy[r] for s, r in zip(series, reported)])
    y = np.concatenate([s.truth_malignant[s.hit[r]] for s, r in zip(series, reported)])
    # Platt scaling of the served probability, pulled towards leaving it as it is
    a, b = fit_logistic(logit(np.clip(p, 1e-6, 1 - 1e-6))[:, None], y, prior=np.array([1.0, 0.0]), l2=1e-3)
    _log(stage="served calibration", series=len(series), nodules_ge6mm=n_positive,
         sensitivity_at_1fp=round(sensitivity, 4), score_at_1fp=round(at_1fp, 4), operating_point=operating_point,
         nodules_for_platt=int(len(p)), malignant=int(y.sum()), platt_a=round(a, 4), platt_b=round(b, 4))
    record_calibration("ldct_nodule_detector", {"detection_threshold": operating_point}, REPOSITORY)
    calibrated = {"malignancy_scale": calibration["malignancy_scale"] * a,
                  "malignancy_bias": calibration["malignancy_bias"] * a + b,
                  "composition_temperature": calibration["composition_temperature"]}
    export_segmenter(segmenter, calibrated)
    return calibrated


# in this order: the malignancy head first, the part most sensitive to other vendors' textures (a stopped
# run keeps the finished stages; training/checkpoints.py)
_TRAINERS = {"segmenter": (train_segmenter, SegmenterNet), "detector": (train_detector, DetectorNet),
             "denoise": (train_denoise, DenoiseNet)}
# the schedules each finished stage went through (part of its checkpoint key)
_STAGE_STEPS = {"denoise": ("denoise",), "detector_base": ("detector",),
                "detector": ("detector", "detector_refine"), "segmenter": ("segmenter",)}


_NEEDS = {"denoise": ("den_", "spacing"), "detector": ("det_", "diameters"),
          "segmenter": ("seg_", "malignant", "composition", "diameters", "volumes")}  # + "margin" (_load_items)


def stage_key(stage: str) -> str:
    """What a stage's checkpoint was trained on: the phantom cache's definition and fingerprint, the
    training seeds, the torch seed and the stage's step counts (or the wall-time budget)."""
    seeds = ",".join(f"{size}{r.start}-{r.stop}" for size, r in ldct_data.TRAIN_SEEDS.items())
    budget = os.environ.get("ONCOSTREAM_LDCT_TIME_BUDGET_S")
    schedule = f"budget{budget}s" if budget else "steps" + "+".join(str(_steps(n)) for n in _STAGE_STEPS[stage])
    extra = os.environ.get("ONCOSTREAM_LDCT_EXTRA_ITEMS")
    return "/".join([f"ldct_{stage}", f"v{ldct_data.VERSION}-{ldct_data.fingerprint()}", seeds, f"torch{TORCH_SEED}",
                     schedule] + ([f"extra:{Path(extra).name}"] if extra else []))


def _load_items(split: str, cached_only: bool, prefixes: tuple[str, ...] = ("",)) -> list[dict]:
    extra = []
    extra_from = os.environ.get("ONCOSTREAM_LDCT_EXTRA_ITEMS")
    if extra_from and split == "train":  # items kept from an earlier generator version (interim runs)
        extra = ldct_data.load(sorted(Path(extra_from).glob("*.npz")), prefixes)
    seeds = ldct_data.TRAIN_SEEDS if split == "train" else ldct_data.VALIDATION_SEEDS
    if cached_only:
        keyed = [(s, ldct_data.cache_path(s, size)) for size, r in seeds.items() for s in r]
        keyed = [(s, p) for s, p in keyed if p.exists()]
    else:
        keyed = list(zip([s for r in seeds.values() for s in r], ldct_data.build_all(split)))
    items = ldct_data.load([p for _, p in keyed], prefixes)
    if split == "train" and items and "diameters" in items[0]:
        for (seed, _), it in zip(keyed, items):
            it["margin"] = ldct_data.training_margins(seed, it["diameters"])
    for it in extra:
        it["margin"] = np.full(len(it["diameters"]), -1, np.int64)
    return items + extra


def train_one(name: str, cached_only: bool = False) -> None:
    """Train one model, resuming from its checkpoint (training/checkpoints.py) when one exists, and
    keep its finished weights there (export reads them); a finished stage is not trained again."""
    key = stage_key(name)
    if checkpoints.finished(f"ldct_{name}", key) is not None:
        _log(stage="skipped: finished weights in the checkpoints", model=name)
        return
    torch.manual_seed(TORCH_SEED)
    items = _load_items("train", cached_only, _NEEDS[name])
    _log(stage="data", model=name, train_items=len(items))
    trainer, _ = _TRAINERS[name]
    rng = np.random.default_rng([TORCH_SEED, len(name)])
    if name == "detector":
        base_key = stage_key("detector_base")
        base = checkpoints.finished("ldct_detector_base", base_key)
        if base is None:
            net = trainer(items, _steps(name), rng, base_key)
            checkpoints.save_finished("ldct_detector_base", base_key, net)
        else:
            net = DetectorNet()
            net.load_state_dict(base)
        net = refine_detector(net, items, _steps("detector_refine"), key)
    else:
        net = trainer(items, _steps(name), rng, key)
    checkpoints.save_finished(f"ldct_{name}", key, net)


def _finished_nets(names: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    nets = {}
    for name in names:
        cls = _TRAINERS[name][1]
        weights = checkpoints.finished(f"ldct_{name}", stage_key(name))
        if weights is None:
            raise SystemExit(f"no finished ldct_{name} weights for {stage_key(name)} in {checkpoints.CHECKPOINT_DIR}: "
                             f"train it first (--only {name})")
        net = cls()
        net.load_state_dict(weights)
        nets[name] = net.eval()
    return nets


def calibrate_and_export(cached_only: bool = False, segmenter_only: bool = False) -> None:
    """Temperatures on the validation patches (composition; malignancy as the starting point), the
    three ONNX files, then the served-path Platt calibration of malignancy (calibrate_served).
    ``segmenter_only``: the denoiser and detector already in the repository stay as they are (a retrained
    one that did not improve on the selection sets is not shipped); only the segmenter is exported and
    the served calibration reruns with the kept models."""
    nets = _finished_nets(("segmenter",) if segmenter_only else tuple(_TRAINERS))
    validation = _load_items("validation", cached_only, _NEEDS["segmenter"])
    mal_logits, mal_labels, comp_logits, comp_labels = validation_logits(nets["segmenter"], validation)
    t_mal = fit_temperature(mal_logits, mal_labels) if len(mal_labels) else 1.0
    t_comp = fit_temperature(comp_logits, comp_labels) if len(comp_labels) else 1.0
    _log(stage="calibration", malignancy_temperature=t_mal, composition_temperature=t_comp,
         validation_nodules=int(len(mal_labels) // 2))
    calibration = {"malignancy_scale": 1.0 / t_mal, "malignancy_bias": 0.0, "composition_temperature": t_comp}
    if segmenter_only:
        export_segmenter(nets["segmenter"], calibration)
    else:
        export_all(nets["denoise"], nets["detector"], nets["segmenter"], calibration)
    calibrate_served(nets["segmenter"], calibration)


def main(argv: list[str] | None = None) -> int:
    """No arguments: build the data, train all three, calibrate, export (what ``make models`` runs).
    ``--only denoise|detector|segmenter`` trains one (the detector's hard-example schedule starts from
    its finished base schedule when that is in the checkpoints); ``--export`` only calibrates and exports
    (``--segmenter-only``: only the segmenter, keeping the repository's denoiser and detector);
    ``--cached-only`` uses the phantoms already cached instead of building the missing ones."""
    args = sys.argv[1:] if argv is None else argv
    cached_only = "--cached-only" in args
    torch.set_num_threads(int(os.environ.get("ONCOSTREAM_TRAIN_THREADS", "2")))
    start = time.time()
    if "--only" in args:
        train_one(args[args.index("--only") + 1], cached_only)
    elif "--export" in args:
        calibrate_and_export(cached_only, segmenter_only="--segmenter-only" in args)
    else:
        for name in _TRAINERS:
            train_one(name, cached_only)
        export_key = "|".join(stage_key(name) for name in _TRAINERS)
        if checkpoints.done("ldct_export", export_key):
            _log(stage="skipped: exported from these checkpoints already")
        else:
            calibrate_and_export(cached_only)
            checkpoints.mark_done("ldct_export", export_key)
    _log(stage="done", wall_s=round(time.time() - start, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
