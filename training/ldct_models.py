"""The three LDCT networks (PyTorch) and their ONNX export; small enough to train on 2 CPU cores.

Tensor names are the contract (model_repository/<model>/contract.yaml): ldct_denoise image ->
denoised; ldct_nodule_detector volume -> heatmap, diameter_mm; ldct_nodule_segmenter patch -> mask,
malignancy, composition.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

OPSET = 17


def _conv3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Module:
    """3x3x3 conv, batch norm (folded into the conv by the ONNX export), ReLU: without the norm the
    8-channel stems died (constant output) within a few hundred steps."""
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class DenoiseNet(nn.Module):
    """Image-domain residual CNN at half resolution: pixel-unshuffle 2x, a few 3x3 convs (two
    dilated for reach), pixel-shuffle back; predicts the noise, which is subtracted.

    The body works in units of 50 HU (input x 20): at HU / 1000 the noise (~0.015) is so small next
    to the tissue steps that the network settles on the identity and never learns to denoise."""

    GAIN = 20.0

    def __init__(self, channels: int = 24):
        super().__init__()
        c = channels
        self.unshuffle = nn.PixelUnshuffle(2)
        self.body = nn.Sequential(
            nn.Conv2d(4, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=4, dilation=4), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, 4, 3, padding=1),
        )
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image - self.shuffle(self.body(self.unshuffle(image * self.GAIN))) / self.GAIN


class _UNet3d(nn.Module):
    """Shared trunk: full-resolution stem, two stride-2 stages, additive skips (cheap on a CPU)."""

    def __init__(self, stem: int = 8):
        super().__init__()
        self.enc1 = _conv3(1, stem)
        self.enc2 = nn.Sequential(_conv3(stem, 16, stride=2), _conv3(16, 16))
        self.enc3 = nn.Sequential(_conv3(16, 32, stride=2), _conv3(32, 32), _conv3(32, 32, dilation=2))
        self.lift2 = nn.Conv3d(32, 16, 1)
        self.dec2 = _conv3(16, 16)
        self.lift1 = nn.Conv3d(16, stem, 1)
        self.dec1 = _conv3(stem, stem)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(F.interpolate(self.lift2(e3), scale_factor=2.0, mode="nearest") + e2)
        d1 = self.dec1(F.interpolate(self.lift1(d2), scale_factor=2.0, mode="nearest") + e1)
        return d1, d2, e3


class DetectorNet(nn.Module):
    """Tiny 3D U-Net on the 2 mm grid (edges multiples of 4): centre heatmap logits and diameter."""

    def __init__(self):
        super().__init__()
        self.trunk = _UNet3d()
        self.head = nn.Conv3d(8, 2, 1)
        nn.init.constant_(self.head.bias, 0.0)
        with torch.no_grad():
            self.head.bias[0] = -4.0  # start with a low centre prior (focal-loss convention)

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d1, _, _ = self.trunk(volume)
        out = self.head(d1)
        return out[:, 0:1], F.softplus(out[:, 1:2]) * 8.0


def _weighted_mean(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-channel mean of [B, C, D, H, W] features under a soft [B, 1, D, H, W] weight (+1 keeps an
    empty weight finite)."""
    return (features * weight).sum(dim=(2, 3, 4)) / (weight.sum(dim=(2, 3, 4)) + 1.0)


class SegmenterNet(nn.Module):
    """3D U-Net on a 48 mm patch at 1 mm: mask logits, malignancy logit, composition logits and
    margin logits (smooth / lobulated / spiculated: an auxiliary training target, not exported)."""

    def __init__(self):
        super().__init__()
        self.trunk = _UNet3d()
        self.mask_head = nn.Conv3d(8, 1, 1)
        # most of a patch is background: starting near p = 0.01 keeps the soft Dice gradient on the
        # few nodule voxels large from the first step (at p = 0.5 it drowns in the background sum)
        nn.init.constant_(self.mask_head.bias, -4.5)
        self.classifier = nn.Sequential(nn.Linear(32 * 3 + 16 * 2 + 3, 64), nn.ReLU(inplace=True), nn.Linear(64, 8))

    def forward(self, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        d1, d2, e3 = self.trunk(patch)
        mask_logit = self.mask_head(d1)
        # pool features inside the predicted mask (soft), in a 6 mm shell around it (where spicules
        # and lobes show), over the nodule's neighbourhood in the deepest stage, plus global context
        # and mask statistics
        weight = torch.sigmoid(mask_logit)
        w2 = F.avg_pool3d(weight, 2)
        shell = (F.max_pool3d(w2, 7, stride=1, padding=3) - w2).clamp(min=0.0)
        w3 = F.max_pool3d(F.avg_pool3d(w2, 2), 3, stride=1, padding=1)
        mass = weight.sum(dim=(2, 3, 4)) + 1.0
        intensity = (patch * weight).sum(dim=(2, 3, 4)) / mass
        spread = (patch * patch * weight).sum(dim=(2, 3, 4)) / mass - intensity * intensity
        pooled = torch.cat([e3.mean(dim=(2, 3, 4)), e3.amax(dim=(2, 3, 4)), _weighted_mean(e3, w3),
                            _weighted_mean(d2, w2), _weighted_mean(d2, shell), intensity, spread,
                            torch.log(mass) / 5.0], dim=1)
        logits = self.classifier(pooled)
        return mask_logit, logits[:, 0:1], logits[:, 1:5], logits[:, 5:8]


class CalibratedDetector(nn.Module):
    """Export wrapper: heatmap as a probability."""

    def __init__(self, net: DetectorNet):
        super().__init__()
        self.net = net

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heat_logit, diameter = self.net(volume)
        return torch.sigmoid(heat_logit), diameter


class CalibratedSegmenter(nn.Module):
    """Export wrapper: probabilities, calibration baked in: Platt scaling of the malignancy logit
    (sigmoid(scale * z + bias), fitted on the served path) and a temperature for the composition."""

    def __init__(self, net: SegmenterNet, malignancy_scale: float = 1.0, malignancy_bias: float = 0.0,
                 composition_temperature: float = 1.0):
        super().__init__()
        self.net = net
        self.register_buffer("malignancy_scale", torch.tensor(float(malignancy_scale)))
        self.register_buffer("malignancy_bias", torch.tensor(float(malignancy_bias)))
        self.register_buffer("t_composition", torch.tensor(float(composition_temperature)))

    def forward(self, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask_logit, malignancy_logit, composition_logits, _ = self.net(patch)
        return (torch.sigmoid(mask_logit), torch.sigmoid(malignancy_logit * self.malignancy_scale + self.malignancy_bias),
                torch.softmax(composition_logits / self.t_composition, dim=1))


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
                output_names: list[str], dynamic_spatial: bool) -> None:
    """ONNX opset 17 with a dynamic batch axis (and dynamic spatial axes where the model allows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    spatial = {i: f"d{i}" for i in range(2, example.dim())} if dynamic_spatial else {}
    dynamic = {input_name: {0: "batch", **spatial}}
    for name in output_names:
        dynamic[name] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=output_names,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
