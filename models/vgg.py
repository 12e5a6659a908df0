"""VGG-16 with BN, CIFAR layout: 13 3x3 convs (torchvision vgg16_bn ``features`` indices),
five max-pools, and a small classifier on the 512-d pooled feature."""
from __future__ import annotations

import torch
import torch.nn as nn

from netspec.archs import ARCHS
from netspec.archs import VGG16_CFG as CFG16  # noqa: F401 (re-exported: its old name)


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int = 10, in_channels: int = 3, hidden: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))  # 28x28 inputs survive 5 pools
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        # Global pooling makes the classifier independent of the input size (28 or 32).
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(0.5), nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(num_classes: int = 10, in_channels: int = 3) -> VGG:
    arch = ARCHS["vgg16"]
    return VGG(list(arch.cfg), num_classes, in_channels, arch.hidden)
