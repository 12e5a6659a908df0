"""The registered architectures, described once and without torch, and CGNet's gating rule.

``models`` builds its torch modules from these descriptions and ``accel_sim.networks`` its
layer lists, so a stage plan, the VGG config or the MobileNetV2 settings live only here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union


class ArchError(ValueError):
    """An architecture, its name or one of its parameters (depth, width, stride, shortcut) is
    invalid; a ValueError, as the model builders raised before."""


@dataclass(frozen=True)
class ResNetArch:
    """torchvision ResNet: 7x7 stem, 3x3 max-pool, four stages of ``blocks`` blocks; a
    bottleneck block (v1.5, stride on the 3x3) widens its output by ``expansion``."""

    blocks: tuple[int, ...]
    bottleneck: bool = False
    widths: ClassVar[tuple[int, ...]] = (64, 128, 256, 512)
    input_hw: ClassVar[tuple[int, int]] = (224, 224)
    num_classes: ClassVar[int] = 1000

    @property
    def expansion(self) -> int:
        return 4 if self.bottleneck else 1


@dataclass(frozen=True)
class CifarResNetArch:
    """CIFAR ResNet-(6n+2) (He et al. 2016): 3x3 stem, three stages of n blocks; with
    ``post_activation`` both convs of a block feed a ReLU (CGNet's block)."""

    depth: int
    post_activation: bool = False
    widths: ClassVar[tuple[int, ...]] = (16, 32, 64)
    input_hw: ClassVar[tuple[int, int]] = (32, 32)
    num_classes: ClassVar[int] = 10

    @property
    def blocks_per_stage(self) -> int:
        if (self.depth - 2) % 6:
            raise ArchError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}")
        return (self.depth - 2) // 6


@dataclass(frozen=True)
class VGGArch:
    """VGG-BN, CIFAR layout: ``cfg`` lists conv widths and "M" (2x2 ceil-mode max-pool); a
    global pool and a ``hidden``-wide classifier follow."""

    cfg: tuple[int | str, ...]
    hidden: int = 512
    input_hw: ClassVar[tuple[int, int]] = (32, 32)
    num_classes: ClassVar[int] = 10


@dataclass(frozen=True)
class MobileNetV2Arch:
    """MobileNetV2 at width 1.0: ``setting`` rows are (t expansion, c output channels,
    n repeats, s first stride), the paper's Table 2."""

    setting: tuple[tuple[int, int, int, int], ...]
    stem_width: int = 32
    last_width: int = 1280
    input_hw: ClassVar[tuple[int, int]] = (224, 224)
    num_classes: ClassVar[int] = 1000


Arch = Union[ResNetArch, CifarResNetArch, VGGArch, MobileNetV2Arch]

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
MOBILENETV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))

ARCHS: dict[str, Arch] = {
    "resnet18": ResNetArch((2, 2, 2, 2)),
    "resnet34": ResNetArch((3, 4, 6, 3)),
    "resnet50": ResNetArch((3, 4, 6, 3), bottleneck=True),
    "resnet20": CifarResNetArch(20),
    "resnet20_postact": CifarResNetArch(20, post_activation=True),
    "resnet56": CifarResNetArch(56),
    "vgg16": VGGArch(VGG16_CFG),
    "mobilenetv2": MobileNetV2Arch(MOBILENETV2_SETTING),
}

GATE_RULES = ("cgnet", "all")


def rule_gates(rule: str, *, reads_input: bool, feeds_activation: bool) -> bool:
    """Whether ``rule`` gates a gatable conv (groups=1). Never the stem, which reads the image.
    ``"cgnet"`` (CGNet's released code) gates only a conv whose output goes through an
    activation (after an optional BN): one feeding a residual add or a linear projection stays
    dense, so the sum stays exact. ``"all"`` gates every other conv too."""
    if rule not in GATE_RULES:
        raise ArchError(f"rule must be one of {', '.join(GATE_RULES)}, got {rule!r}")
    return not reads_input and (rule == "all" or feeds_activation)
