"""The layer-shape record and the one MAC, parameter and output-size arithmetic.

dyngate (graph view, profile, pruning criteria, CUCB plan) and accel_sim (topology, simulate)
all count with these, so a conv's cost is written once. Pure Python: accel_sim stays torch-free.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

KINDS = ("conv2d", "linear")


class ShapeError(ValueError):
    """A layer shape that cannot exist (a kernel larger than its padded input, groups that do
    not divide the channels), or a count that needs a spatial size nobody measured."""


def conv_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """PyTorch output size: ``floor((H + 2p - d(k-1) - 1)/s) + 1``."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ShapeError(f"kernel {kernel} (dilation {dilation}) does not fit input {size} with padding {pad}")
    return out


def param_count(kind: str, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (1, 1),
                groups: int = 1) -> int:
    """Weights of a conv (each filter sees ``in/groups`` channels) or linear layer, bias excluded."""
    if kind == "linear":
        return in_channels * out_channels
    return out_channels * (in_channels // groups) * kernel_size[0] * kernel_size[1]


def mac_count(kind: str, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (1, 1),
              groups: int = 1, output_hw: tuple[int, int] = (1, 1)) -> int:
    """MACs per image: a conv uses every weight once per output position, a linear once."""
    weights = param_count(kind, in_channels, out_channels, kernel_size, groups)
    return weights if kind == "linear" else output_hw[0] * output_hw[1] * weights


def is_depthwise(layer) -> bool:
    """A depthwise conv (``groups == in_channels == out_channels > 1``): any record or module
    with those three attributes (a LayerShape, a graph LayerInfo, an ``nn.Conv2d``)."""
    return layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels


@dataclass(frozen=True)
class LayerShape:
    """One conv or linear layer's shape; ``output_hw`` (0, 0) is computed from the input, and
    ``input_hw=None`` says the spatial size is unknown (a graph captured without an example
    input): parameters count, MACs refuse.

    A linear layer is a 1x1 conv on a 1x1 map: the defaults describe it.
    """

    name: str
    kind: str  # "conv2d" | "linear"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    input_hw: tuple[int, int] | None = (1, 1)
    output_hw: tuple[int, int] | None = (0, 0)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ShapeError(f"layer {self.name}: kind must be conv2d or linear, got {self.kind!r}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ShapeError(f"layer {self.name}: groups={self.groups} must divide in/out channels "
                             f"({self.in_channels}/{self.out_channels})")
        if self.input_hw is None:
            object.__setattr__(self, "output_hw", None)
        elif self.output_hw == (0, 0):
            hw = tuple(conv_out(self.input_hw[i], self.kernel_size[i], self.stride[i], self.padding[i],
                                self.dilation[i]) for i in range(2))
            object.__setattr__(self, "output_hw", hw)

    @property
    def params(self) -> int:
        return param_count(self.kind, self.in_channels, self.out_channels, self.kernel_size, self.groups)

    @property
    def macs(self) -> int:
        """MACs per image."""
        if self.output_hw is None:
            raise ShapeError(f"layer {self.name}: spatial size unknown, so MACs cannot be counted")
        return mac_count(self.kind, self.in_channels, self.out_channels, self.kernel_size, self.groups,
                         self.output_hw)

    def with_channels(self, in_channels: int, out_channels: int) -> "LayerShape":
        """This layer with other channel counts, as pruning leaves it: a depthwise conv
        (groups == in == out channels) stays depthwise, other layers keep their groups."""
        depthwise = is_depthwise(self)
        return dataclasses.replace(self, in_channels=in_channels, out_channels=out_channels,
                                   groups=in_channels if depthwise else self.groups)
