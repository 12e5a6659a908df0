"""Built-in topologies with torchvision-style layer names and PyTorch padding/stride semantics.

Only conv and linear layers are listed (pools and adds cost no MACs on the array), but pools
are applied to the spatial size so every layer gets its true input and output size.
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Callable

from accel_sim.topology import Layer, conv, conv_out, linear
from netspec.archs import VGG16_CFG  # noqa: F401 (re-exported: its old home)
from netspec.archs import ARCHS, Arch, CifarResNetArch, MobileNetV2Arch, ResNetArch, VGGArch, rule_gates


def _pool(hw: tuple[int, int], k: int, s: int, p: int = 0, ceil_mode: bool = False) -> tuple[int, int]:
    if not ceil_mode:
        return conv_out(hw[0], k, s, p), conv_out(hw[1], k, s, p)
    return tuple(int(math.ceil((h + 2 * p - k) / s)) + 1 for h in hw)  # type: ignore[return-value]


def _resnet(arch: ResNetArch, cin: int, hw: tuple[int, int], num_classes: int) -> list[Layer]:
    """torchvision ResNet (v1.5: stride on the 3x3 of a bottleneck)."""
    out: list[Layer] = [conv("conv1", cin, 64, 7, hw, 2, 3)]
    hw = out[-1].output_hw
    hw = _pool(hw, 3, 2, 1)
    inplanes, exp = 64, arch.expansion
    for li, (planes, n) in enumerate(zip(arch.widths, arch.blocks), start=1):
        for b in range(n):
            s = 2 if (b == 0 and li > 1) else 1
            pre = f"layer{li}.{b}"
            if arch.bottleneck:
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
    out.append(linear("fc", inplanes, num_classes))
    return out


def _cifar_resnet(arch: CifarResNetArch, cin: int, hw: tuple[int, int], num_classes: int) -> list[Layer]:
    """CIFAR ResNet-(6n+2) (He et al. 2016): 3x3 everywhere, option-A (parameter-free) shortcuts."""
    inplanes = arch.widths[0]
    out = [conv("conv1", cin, inplanes, 3, hw, 1, 1)]
    for li, planes in enumerate(arch.widths, start=1):
        for b in range(arch.blocks_per_stage):
            s = 2 if (b == 0 and li > 1) else 1
            out.append(conv(f"layer{li}.{b}.conv1", inplanes, planes, 3, hw, s, 1))
            hw = out[-1].output_hw
            out.append(conv(f"layer{li}.{b}.conv2", planes, planes, 3, hw, 1, 1))
            inplanes = planes
    out.append(linear("fc", inplanes, num_classes))
    return out


def _vgg(arch: VGGArch, cin: int, hw: tuple[int, int], num_classes: int) -> list[Layer]:
    """VGG-BN, CIFAR layout: ``features.i`` indices as in torchvision vgg16_bn (conv, BN, ReLU;
    ceil-mode 2x2 pools so 28x28 inputs survive), global pool, ``classifier.0`` to the hidden
    width and ``classifier.3`` to the classes (the layout of ``models.vgg``)."""
    out: list[Layer] = []
    idx, c = 0, cin
    for v in arch.cfg:
        if v == "M":
            hw = _pool(hw, 2, 2, 0, ceil_mode=True)
            idx += 1
        else:
            out.append(conv(f"features.{idx}", c, int(v), 3, hw, 1, 1))
            c, idx = int(v), idx + 3
    out += [linear("classifier.0", c, arch.hidden), linear("classifier.3", arch.hidden, num_classes)]
    return out


def _mobilenetv2(arch: MobileNetV2Arch, cin: int, hw: tuple[int, int], num_classes: int) -> list[Layer]:
    """torchvision MobileNetV2 (width 1.0): ``features.0.0`` stem, inverted residuals
    ``features.i.conv.*`` with a depthwise 3x3 (groups = channels), ``features.18.0``, ``classifier.1``."""
    c = arch.stem_width
    out = [conv("features.0.0", cin, c, 3, hw, 2, 1)]
    hw, i = out[-1].output_hw, 1
    for t, ch, n, s in arch.setting:
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
    out.append(conv(f"features.{i}.0", c, arch.last_width, 1, hw, 1, 0))
    out.append(linear("classifier.1", arch.last_width, num_classes))
    return out


_LAYERS: dict[type, Callable[..., list[Layer]]] = {
    ResNetArch: _resnet, CifarResNetArch: _cifar_resnet, VGGArch: _vgg, MobileNetV2Arch: _mobilenetv2,
}


def _layers(arch: Arch, cin: int = 3, hw: tuple[int, int] | None = None,
            num_classes: int | None = None) -> list[Layer]:
    """The layer list of ``arch`` on ``cin`` x ``hw`` inputs (default: its dataset's)."""
    return _LAYERS[type(arch)](arch, cin, arch.input_hw if hw is None else hw,
                               arch.num_classes if num_classes is None else num_classes)


# Every registered architecture but the post-activation ones: their layers are their base
# network's, and cgnet_gated, which reads layer names, would gate them as the base network's.
BUILTINS: dict[str, Callable[..., list[Layer]]] = {
    name: partial(_layers, arch) for name, arch in ARCHS.items() if not getattr(arch, "post_activation", False)
}
# the per-network builders of the old API, ``resnet18(cin, hw, num_classes)`` and so on
resnet18, resnet34, resnet50 = BUILTINS["resnet18"], BUILTINS["resnet34"], BUILTINS["resnet50"]
resnet20, resnet56 = BUILTINS["resnet20"], BUILTINS["resnet56"]
vgg16, mobilenetv2 = BUILTINS["vgg16"], BUILTINS["mobilenetv2"]


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
_MBV2_PROJECTION = re.compile(r"^features\.\d+\.conv\.\d+$")  # the linear 1x1 of an inverted residual


def cgnet_gated(layers: list[Layer]) -> set[str]:
    """Names of the layers CGNet would gate: :func:`netspec.archs.rule_gates` (``"cgnet"``)
    on the conv2d layers with ``groups == 1`` and a 1x1 or 3x3 kernel, the first conv being the
    stem and :func:`_feeds_activation` telling from the name where its output goes (so
    BasicBlock gates ``conv1`` only, Bottleneck ``conv1`` and ``conv2``)."""
    convs = [l for l in layers if l.kind == "conv2d"]
    stem = convs[0].name if convs else None
    last_in_block: dict[str, int] = {}
    for l in convs:
        m = _RESNET_CONV.match(l.name)
        if m:
            last_in_block[m.group(1)] = max(last_in_block.get(m.group(1), 0), int(m.group(2)))
    return {l.name for l in convs if l.groups == 1 and l.kernel_size in ((1, 1), (3, 3))
            and rule_gates("cgnet", reads_input=l.name == stem,
                           feeds_activation=_feeds_activation(l.name, last_in_block))}


def _feeds_activation(name: str, last_in_block: dict[str, int]) -> bool:
    """What a layer name tells of its output: a shortcut conv (``downsample``/``shortcut``) and
    the last conv of a ResNet block (``layerX.Y.convN``) feed the residual add, MobileNetV2's
    projection (``features.N.conv.K``, a bare conv where the others are ``conv.K.0``) only a
    BN; the others an activation."""
    if "downsample" in name or "shortcut" in name or _MBV2_PROJECTION.match(name):
        return False
    m = _RESNET_CONV.match(name)
    return not (m and int(m.group(2)) == last_in_block[m.group(1)])
