"""ResNet-50: torchvision's Bottleneck layout (v1.5, stride on the 3x3) and state-dict names,
so torchvision weights load with ``load_state_dict`` (no weights are downloaded here)."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.resnet import ResNet
from netspec.archs import ARCHS


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: 1x1 reduce, 3x3 (stride), 1x1 expand by 4 (+shortcut) -relu."""

    expansion = ARCHS["resnet50"].expansion

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class BottleneckResNet(ResNet):
    """:class:`models.resnet.ResNet` (stem, stages, forward) with Bottleneck stages and a
    2048-wide classifier."""

    def __init__(self, layers: list[int], num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__(layers, num_classes, in_channels)
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        """torchvision's stage: the first block strides and widens (1x1 conv + BN shortcut)."""
        inplanes, width = self.inplanes, planes * Bottleneck.expansion
        shortcut = None
        if stride != 1 or inplanes != width:
            shortcut = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride, bias=False), nn.BatchNorm2d(width))
        self.inplanes = width
        return nn.Sequential(Bottleneck(inplanes, planes, stride, shortcut),
                             *(Bottleneck(width, planes) for _ in range(1, blocks)))


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> BottleneckResNet:
    return BottleneckResNet(list(ARCHS["resnet50"].blocks), num_classes, in_channels)
