"""The two mammography networks and their export wrappers (torch; training only).

Both read the same preprocessed view (ingest/preprocess/mammo.py): float32 [B, 1, 512, 416].

``ClassifierNet`` is fully convolutional down to stride 16 and predicts two maps on the 32 x 26 grid:
lesion (any mass or calcification cluster: the explainability heatmap) and malignancy. The view's
malignancy logit is a smooth maximum (log-sum-exp) of the malignancy map, so a single small
suspicious region can carry a whole view, and the location that did is the one the heatmap shows.

``DensityNet`` works on a 4x average-pooled view (density is a global texture property) and ends in a
global pool and four logits (BI-RADS a-d).

Calibration (Platt scaling of the view logit, temperature of the density logits) is fitted on a
validation split and baked into the exported graphs, so the ONNX outputs are calibrated probabilities.
"""

from __future__ import annotations

import math

import torch
from torch import nn

HEATMAP_STRIDE = 16
LSE_SHARPNESS = 4.0  # log-sum-exp pooling: larger is closer to max pooling


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ClassifierNet(nn.Module):
    """[B, 1, 512, 416] -> lesion logits [B, 1, 32, 26], malignancy logits [B, 1, 32, 26]."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv(1, w // 2, 2),
            _conv(w // 2, w, 2), _conv(w, w),
            _conv(w, 2 * w, 2), _conv(2 * w, 2 * w),
            _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w),
            _conv(4 * w, 4 * w, dilation=2), _conv(4 * w, 4 * w, dilation=4),
        )
        self.maps = nn.Conv2d(4 * w, 2, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.maps(self.features(image))
        return maps[:, :1], maps[:, 1:]


def view_logit(malignancy_map: torch.Tensor) -> torch.Tensor:
    """Smooth maximum of the malignancy map -> [B]; minus log(cells) so its scale does not depend on
    the grid size."""
    flat = malignancy_map.flatten(1)
    return (torch.logsumexp(LSE_SHARPNESS * flat, dim=1) - math.log(flat.shape[1])) / LSE_SHARPNESS


class DensityNet(nn.Module):
    """[B, 1, 512, 416] -> density logits [B, 4]."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.AvgPool2d(4),
            _conv(1, w), _conv(w, w, 2),
            _conv(w, 2 * w), _conv(2 * w, 2 * w, 2),
            _conv(2 * w, 2 * w), _conv(2 * w, 2 * w, 2),
        )
        self.head = nn.Linear(4 * w, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = self.features(image)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


class ExportedClassifier(nn.Module):
    """One classifier with its Platt scaling, as training/mammo_train.py exports it (calibrated outputs
    named as the contract says); the served graph is the ensemble below."""

    def __init__(self, net: ClassifierNet, platt_a: float, platt_b: float):
        super().__init__()
        self.net = net
        self.register_buffer("platt", torch.tensor([platt_a, platt_b], dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lesion, malignancy_map = self.net(image)
        logit = view_logit(malignancy_map) * self.platt[0] + self.platt[1]
        return torch.sigmoid(logit).unsqueeze(1), torch.sigmoid(lesion)


class ExportedEnsemble(nn.Module):
    """What ``mammo_classifier/1/model.onnx`` computes (training/mammo_ensemble.py): the members'
    Platt-calibrated view logits averaged -> probability, their lesion heatmaps averaged."""

    def __init__(self, nets: list[ClassifierNet], platts: list[tuple[float, float]]):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.register_buffer("platt", torch.tensor(platts, dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, heatmaps = [], []
        for k, net in enumerate(self.nets):
            lesion, malignancy_map = net(image)
            logits.append(view_logit(malignancy_map) * self.platt[k, 0] + self.platt[k, 1])
            heatmaps.append(torch.sigmoid(lesion))
        return (torch.sigmoid(torch.stack(logits).mean(dim=0)).unsqueeze(1),
                torch.stack(heatmaps).mean(dim=0))


class ExportedDensity(nn.Module):
    """What ``mammo_density/1/model.onnx`` computes: temperature-scaled a-d probabilities."""

    def __init__(self, net: DensityNet, temperature: float):
        super().__init__()
        self.net = net
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(image) / self.temperature, dim=1)
