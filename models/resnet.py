"""ResNets: ImageNet layout (torchvision-compatible names) and CIFAR layout (He et al. 2016).

No weights are downloaded; ``in_channels``/``num_classes`` let 1-channel 28x28 data through.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from netspec.archs import ARCHS, ArchError, CifarResNetArch, ResNetArch


def _two_convs(block: nn.Module, in_planes: int, planes: int, stride: int) -> None:
    """conv1-bn1-relu-conv2-bn2 of a basic block, registered in torchvision's order and names
    (state-dict keys and their order depend on it)."""
    block.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    block.bn1 = nn.BatchNorm2d(planes)
    block.relu = nn.ReLU(inplace=True)
    block.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    block.bn2 = nn.BatchNorm2d(planes)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv1-bn1-relu-conv2-bn2 (+shortcut) -relu."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        _two_convs(self, inplanes, planes, stride)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ImageNet-layout ResNet with BasicBlocks; state-dict keys match torchvision's."""

    def __init__(self, layers: list[int], num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (planes, blocks) in enumerate(zip(ResNetArch.widths, layers)):
            setattr(self, f"layer{i + 1}", self._make_layer(planes, blocks, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        _init(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PadShortcut(nn.Module):
    """Option-A shortcut of CIFAR ResNets: subsample by ``stride`` and zero-pad channels.

    Parameter-free; ``dyngate.channel_ops`` registers its channel map (input channel c ->
    c + pad) for dyngate. The model zoo pads symmetrically; channel surgery may leave unequal
    zero bands below and above the copied block (``pad_low``), e.g. when a pruning criterion or
    a CUCB bandit keeps more rows of one band.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, pad_low: int | None = None) -> None:
        super().__init__()
        if pad_low is None:
            if (out_planes - in_planes) % 2:
                raise ArchError(f"PadShortcut needs an even channel increase for symmetric "
                                 f"padding, got {in_planes}->{out_planes} (pass pad_low)")
            pad_low = (out_planes - in_planes) // 2
        if not 0 <= pad_low <= out_planes - in_planes:
            raise ArchError(f"PadShortcut {in_planes}->{out_planes}: pad_low={pad_low} outside "
                             f"[0, {out_planes - in_planes}]")
        self.in_planes, self.out_planes, self.stride = in_planes, out_planes, stride
        self.pad = pad_low
        self.pad_high = out_planes - in_planes - pad_low

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad_high))

    def extra_repr(self) -> str:
        return f"{self.in_planes}->{self.out_planes}, stride={self.stride}, pad=({self.pad}, {self.pad_high})"


class CifarBasicBlock(nn.Module):
    """CIFAR BasicBlock; shortcut is PadShortcut (option A) or 1x1 conv + BN (option B)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        _two_convs(self, in_planes, planes, stride)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = PadShortcut(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                              nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarPostActBlock(CifarBasicBlock):
    """CGNet's ResNet block: both convs followed by BN + ReLU, the shortcut added after the
    second ReLU, so CGNet's rule gates both convs (every conv feeds an activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return out + self.shortcut(x)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 16/32/64 channels, stem conv, 3 stages, linear."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 shortcut: str = "A", block: type[CifarBasicBlock] = CifarBasicBlock) -> None:
        super().__init__()
        n = CifarResNetArch(depth).blocks_per_stage
        if shortcut not in ("A", "B"):
            raise ArchError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        planes_in = 16
        for i, planes in enumerate(CifarResNetArch.widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(planes_in, planes, stride, shortcut))
                planes_in = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    return ResNet(list(ARCHS["resnet18"].blocks), num_classes, in_channels)


def resnet34(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    return ResNet(list(ARCHS["resnet34"].blocks), num_classes, in_channels)


def _cifar_resnet(name: str, num_classes: int, in_channels: int, shortcut: str) -> CifarResNet:
    arch = ARCHS[name]
    block = CifarPostActBlock if arch.post_activation else CifarBasicBlock
    return CifarResNet(arch.depth, num_classes, in_channels, shortcut, block)


def resnet20(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    return _cifar_resnet("resnet20", num_classes, in_channels, shortcut)


def resnet20_postact(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """ResNet-20 with CGNet's post-activation blocks (:class:`CifarPostActBlock`)."""
    return _cifar_resnet("resnet20_postact", num_classes, in_channels, shortcut)


def resnet56(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    return _cifar_resnet("resnet56", num_classes, in_channels, shortcut)
