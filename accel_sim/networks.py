"""Built-in topologies with torchvision-style layer names and PyTorch padding/stride semantics.

Only conv and linear layers are listed (pools and adds cost no MACs on the array), but pools
are applied to the spatial size so every layer gets its true input and output size.
"""
from __future__ import annotations

import math
import re
from typing import Callable

from accel_sim.topology import Layer, conv, conv_out, linear

IMAGENET_NETS = ("resnet18", "resnet34", "resnet50", "mobilenetv2")
CIFAR_NETS = ("resnet20", "resnet56", "vgg16")


def _pool(hw: tuple[int, int], k: int, s: int, p: int = 0, ceil_mode: bool = False) -> tuple[int, int]:
    if not ceil_mode:
        return conv_out(hw[0], k, s, p), conv_out(hw[1], k, s, p)
    return tuple(int(math.ceil((h + 2 * p - k) / s)) + 1 for h in hw)  # type: ignore[return-value]


def _resnet(blocks: list[int], bottleneck: bool, cin: int, hw: tuple[int, int],
            num_classes: int) -> list[Layer]:
    """torchvision ResNet (v1.5: stride on the 3x3 of a bottleneck)."""
    out: list[Layer] = [conv("conv1", cin, 64, 7, hw, 2, 3)]
    hw = out[-1].output_hw
    hw = _pool(hw, 3, 2, 1)
    inplanes, exp = 64, (4 if bottleneck else 1)
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for b in range(n):
            s = 2 if (b == 0 and li > 1) else 1
            pre = f"layer{li}.{b}"
            if bottleneck:
                out.append(conv(f"{pre}.conv1", inplanes, planes, 1, hw, 1, 0))
                out.append(conv(f"{pre}.conv2", planes, planes, 3, hw, s, 1))
                bhw = out[-1].output_hw
                out.append(conv(f"{pre}.conv3", planes, planes * exp, 1, bhw, 1, 0))
            else:
                out.append(conv(f"{pre}.conv1", inplanes, planes, 3, hw, s, 1))
                bhw = out[-1].output_hw
                out.append(conv(f"{pre}.conv2", planes, planes, 3, bhw, 1, 1))
            if s != 1 or inplanes != planes * exp:
                out.append(conv(f"{pre}.downsample.0", inplanes, planes * exp, 1, hw, s, 0))
            inplanes, hw = planes * exp, bhw
    out.append(linear("fc", 512 * exp, num_classes))
    return out


def resnet18(cin: int = 3, hw: tuple[int, int] = (224, 224), num_classes: int = 1000) -> list[Layer]:
    return _resnet([2, 2, 2, 2], False, cin, hw, num_classes)


def resnet34(cin: int = 3, hw: tuple[int, int] = (224, 224), num_classes: int = 1000) -> list[Layer]:
    return _resnet([3, 4, 6, 3], False, cin, hw, num_classes)


def resnet50(cin: int = 3, hw: tuple[int, int] = (224, 224), num_classes: int = 1000) -> list[Layer]:
    return _resnet([3, 4, 6, 3], True, cin, hw, num_classes)


def _cifar_resnet(n: int, cin: int, hw: tuple[int, int], num_classes: int) -> list[Layer]:
    """CIFAR ResNet-(6n+2) (He et al. 2016): 3x3 everywhere, option-A (parameter-free) shortcuts."""
    out = [conv("conv1", cin, 16, 3, hw, 1, 1)]
    inplanes = 16
    for li, planes in enumerate((16, 32, 64), start=1):
        for b in range(n):
            s = 2 if (b == 0 and li > 1) else 1
            out.append(conv(f"layer{li}.{b}.conv1", inplanes, planes, 3, hw, s, 1))
            hw = out[-1].output_hw
            out.append(conv(f"layer{li}.{b}.conv2", planes, planes, 3, hw, 1, 1))
            inplanes = planes
    out.append(linear("fc", 64, num_classes))
    return out


def resnet20(cin: int = 3, hw: tuple[int, int] = (32, 32), num_classes: int = 10) -> list[Layer]:
    return _cifar_resnet(3, cin, hw, num_classes)


def resnet56(cin: int = 3, hw: tuple[int, int] = (32, 32), num_classes: int = 10) -> list[Layer]:
    return _cifar_resnet(9, cin, hw, num_classes)


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(cin: int = 3, hw: tuple[int, int] = (32, 32), num_classes: int = 10) -> list[Layer]:
    """VGG-16-BN, CIFAR layout: ``features.i`` indices as in torchvision vgg16_bn (conv, BN, ReLU;
    ceil-mode 2x2 pools so 28x28 inputs survive), global pool, ``classifier.0`` 512->512 and
    ``classifier.3`` 512->classes (the layout of ``models.vgg``)."""
    out: list[Layer] = []
    idx, c = 0, cin
    for v in VGG16_CFG:
        if v == "M":
            hw = _pool(hw, 2, 2, 0, ceil_mode=True)
            idx += 1
        else:
            out.append(conv(f"features.{idx}", c, int(v), 3, hw, 1, 1))
            c, idx = int(v), idx + 3
    out += [linear("classifier.0", c, 512), linear("classifier.3", 512, num_classes)]
    return out


def mobilenetv2(cin: int = 3, hw: tuple[int, int] = (224, 224), num_classes: int = 1000) -> list[Layer]:
    """torchvision MobileNetV2 (width 1.0): ``features.0.0`` stem, inverted residuals
    ``features.i.conv.*`` with a depthwise 3x3 (groups = channels), ``features.18.0``, ``classifier.1``."""
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1)]
    out = [conv("features.0.0", cin, 32, 3, hw, 2, 1)]
    hw, c, i = out[-1].output_hw, 32, 1
    for t, ch, n, s in setting:
        for b in range(n):
            stride, hidden, pre = (s if b == 0 else 1), c * t, f"features.{i}.conv"
            j = 0
            if t != 1:
                out.append(conv(f"{pre}.0.0", c, hidden, 1, hw, 1, 0))
                j = 1
            out.append(conv(f"{pre}.{j}.0", hidden, hidden, 3, hw, stride, 1, groups=hidden))
            hw = out[-1].output_hw
            out.append(conv(f"{pre}.{j + 1}", hidden, ch, 1, hw, 1, 0))
            c, i = ch, i + 1
    out.append(conv(f"features.{i}.0", c, 1280, 1, hw, 1, 0))
    out.append(linear("classifier.1", 1280, num_classes))
    return out


BUILTINS: dict[str, Callable[..., list[Layer]]] = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "mobilenetv2": mobilenetv2,
    "resnet20": resnet20, "resnet56": resnet56, "vgg16": vgg16,
}


def build(name: str, input_chw: tuple[int, int, int] | None = None,
          num_classes: int | None = None) -> list[Layer]:
    """A built-in topology; ``input_chw`` overrides the channels and size (e.g. (1, 28, 28))."""
    if name not in BUILTINS:
        raise ValueError(f"unknown network {name!r}; built-ins: {', '.join(sorted(BUILTINS))}")
    kw: dict[str, object] = {}
    if input_chw is not None:
        kw["cin"], kw["hw"] = input_chw[0], (input_chw[1], input_chw[2])
    if num_classes is not None:
        kw["num_classes"] = num_classes
    return BUILTINS[name](**kw)


_RESNET_CONV = re.compile(r"^(layer\d+\.\d+)\.conv(\d+)$")


def cgnet_gated(layers: list[Layer]) -> set[str]:
    """Names of the layers CGNet would gate.

    Rule: conv2d, ``groups == 1``, kernel 1x1 or 3x3; not the stem (first conv) and not a linear
    classifier; not a shortcut (``downsample``/``shortcut`` in the name); and, for ResNet blocks
    (``layerX.Y.convN``), not the block's last conv, whose output goes straight into the residual
    add (so BasicBlock gates ``conv1`` only, Bottleneck ``conv1`` and ``conv2``).  The residual
    sum must be exact, which is why CGNet leaves those convs dense.
    """
    convs = [l for l in layers if l.kind == "conv2d"]
    stem = convs[0].name if convs else None
    last_in_block: dict[str, int] = {}
    for l in convs:
        m = _RESNET_CONV.match(l.name)
        if m:
            last_in_block[m.group(1)] = max(last_in_block.get(m.group(1), 0), int(m.group(2)))
    gated = set()
    for l in convs:
        if l.name == stem or l.groups != 1 or l.kernel not in ((1, 1), (3, 3)):
            continue
        if "downsample" in l.name or "shortcut" in l.name:
            continue
        m = _RESNET_CONV.match(l.name)
        if m and int(m.group(2)) == last_in_block[m.group(1)]:
            continue
        gated.add(l.name)
    return gated
