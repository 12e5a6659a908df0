"""Convolution geometry shared by the CPU and Triton paths."""
from __future__ import annotations

from dataclasses import dataclass

from kernels.errors import KernelArgError


def pair(v, name: str) -> tuple[int, int]:
    """Normalise an int or 2-sequence conv parameter to ``(h, w)``."""
    if isinstance(v, int):
        return (v, v)
    try:
        a, b = v
        return (int(a), int(b))
    except (TypeError, ValueError):
        raise KernelArgError(f"{name} must be an int or a pair of ints, got {v!r}") from None


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one 2-D convolution (no conv groups; the channel partition is separate)."""

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.padding[0] - self.dilation[0] * (self.kh - 1) - 1) // self.stride[0] + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.padding[1] - self.dilation[1] * (self.kw - 1) - 1) // self.stride[1] + 1

    @property
    def hp(self) -> int:
        return self.h + 2 * self.padding[0]

    @property
    def wp(self) -> int:
        return self.w + 2 * self.padding[1]

    @property
    def positions(self) -> int:
        """Output positions N*Ho*Wo: the M of the implicit GEMM."""
        return self.n * self.ho * self.wo
