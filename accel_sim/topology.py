"""Layer topology: plain-data conv/linear layers, their GEMM view, and the readers.

A topology is a list of :class:`Layer` in execution order.  Everything downstream
(dataflow, gating, memory, cost) works on these records, so the hot path never
touches torch.  Sources: built-in networks (:mod:`accel_sim.networks`), a SCALE-Sim
topology CSV (:func:`read_scalesim_csv`) and a torch model (:func:`from_torch`).
"""
from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from accel_sim.atomic import write_text_atomic
from netspec.layer import LayerShape, conv_out  # noqa: F401 - conv_out re-exported


def scalesim_out(size: int, kernel: int, stride: int) -> int:
    """SCALE-Sim v2's rule ``ceil((H - R + S)/S)`` on an already padded input (no padding field)."""
    return int(math.ceil((size - kernel + stride) / stride))


@dataclass(frozen=True)
class Layer(LayerShape):
    """One conv or linear layer run on ``batch`` images (the GEMM's M is batch x output pixels).

    ``gated`` and the gate geometry (``partitions``, ``grouped``, ``granularity``) say whether
    the CGNet scheduler runs a base and a conditional pass; density lives in the gate spec.
    """

    batch: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"layer {self.name}: batch must be an integer >= 1, got {self.batch!r}")
        super().__post_init__()

    # ---- GEMM view (per group): M output pixels of the batch x N filters, reduction K ----
    @property
    def gemm_m(self) -> int:
        return self.batch * self.output_hw[0] * self.output_hw[1]

    @property
    def gemm_n(self) -> int:
        return self.out_channels // self.groups

    @property
    def gemm_k(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1] * self.in_channels // self.groups

    @property
    def macs(self) -> int:
        """MACs of the whole batch."""
        return self.batch * super().macs

    @property
    def ifmap_words(self) -> int:
        """Unique input words of the batch (unpadded, not im2col-expanded)."""
        return self.batch * self.in_channels * self.input_hw[0] * self.input_hw[1]

    @property
    def filter_words(self) -> int:
        return self.out_channels * self.gemm_k

    @property
    def ofmap_words(self) -> int:
        return self.out_channels * self.gemm_m

    def shape_fields(self) -> dict[str, object]:
        """The fields a sparsity profile must match, in profile spelling."""
        return {
            "kind": self.kind, "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "stride": list(self.stride),
            "padding": list(self.padding), "dilation": list(self.dilation), "groups": self.groups,
            "input_hw": list(self.input_hw), "output_hw": list(self.output_hw),
        }


def conv(name: str, cin: int, cout: int, k: int, hw: tuple[int, int], stride: int = 1,
         pad: int | None = None, groups: int = 1) -> Layer:
    """Square conv with PyTorch semantics; ``pad`` defaults to ``k // 2`` ("same" for odd k)."""
    p = k // 2 if pad is None else pad
    return Layer(name, "conv2d", cin, cout, (k, k), (stride, stride), (p, p), (1, 1), groups, hw)


def linear(name: str, fin: int, fout: int) -> Layer:
    return Layer(name, "linear", fin, fout, input_hw=(1, 1), output_hw=(1, 1))


def with_batch(layers: Sequence[Layer], batch: int) -> list[Layer]:
    """The same layers run on ``batch`` images at once: M (and the ifmap/ofmap) grow, the
    filters are fetched once and reused across the batch, as an accelerator batches."""
    return [dataclasses.replace(l, batch=batch) for l in layers]


# --------------------------------------------------------------------------- SCALE-Sim CSV
SCALESIM_HEADER = ["Layer name", "IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width",
                   "Channels", "Num Filter", "Strides"]


def read_scalesim_csv(path: str | Path) -> list[Layer]:
    """Read a SCALE-Sim v2 conv topology CSV with SCALE-Sim's conventions.

    SCALE-Sim has no padding field (dims are taken as already padded), sizes the ofmap with
    ``ceil((H-R+S)/S)``, drops the last field of each row (rows end with a comma) and splits a
    layer whose name contains ``DP`` into per-channel depthwise convolutions; we keep the
    depthwise layer as one ``groups=C`` layer, which has the same per-group GEMMs.
    """
    path = Path(path)
    layers: list[Layer] = []
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path}: empty topology file")
    for lineno, row in enumerate(rows[1:], start=2):
        fields = [f.strip() for f in row]
        if fields and fields[-1] == "":
            fields = fields[:-1]
        if not any(fields):
            continue
        if len(fields) < 8:
            raise ValueError(f"{path}:{lineno}: expected 8 fields ({', '.join(SCALESIM_HEADER)}) "
                             f"followed by a comma, got {len(fields)}")
        name = fields[0]
        try:
            ih, iw, fh_, fw, ch, nf, st = (int(float(x)) for x in fields[1:8])
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno} (layer {name}): non-integer field: {exc}") from None
        oh, ow = scalesim_out(ih, fh_, st), scalesim_out(iw, fw, st)
        if oh < 1 or ow < 1:
            raise ValueError(f"{path}:{lineno} (layer {name}): filter {fh_}x{fw} larger than ifmap {ih}x{iw}")
        groups = ch if "DP" in name else 1
        cout = ch if "DP" in name else nf
        layers.append(Layer(name, "conv2d", ch, cout, (fh_, fw), (st, st), (0, 0), (1, 1), groups,
                            (ih, iw), (oh, ow)))
    if not layers:
        raise ValueError(f"{path}: no layers")
    return layers


def scalesim_unsupported(layer: Layer) -> str | None:
    """Why SCALE-Sim's CSV cannot express ``layer`` (None if it can)."""
    if layer.groups != 1:
        return f"groups={layer.groups} (grouped/depthwise conv)"
    if layer.dilation != (1, 1):
        return f"dilation {list(layer.dilation)}"
    if layer.stride[0] != layer.stride[1]:
        return f"non-square stride {list(layer.stride)}"
    if layer.batch != 1:
        return f"batch {layer.batch} (SCALE-Sim topologies are one image)"
    return None


def write_scalesim_csv(layers: Iterable[Layer], path: str | Path, skip_unsupported: bool = False) -> list[str]:
    """Write layers as a SCALE-Sim CSV with padded input dims (so SCALE-Sim sees our padding).

    SCALE-Sim's ceil rule can still give one extra row when (H+2p-k) is not divisible by s;
    ``write_scalesim_csv`` trims the padded height so its rule yields our output size.
    Layers SCALE-Sim cannot express (grouped/depthwise, dilated, non-square stride) raise one
    ValueError naming all of them before anything is written; with ``skip_unsupported`` they are
    left out instead and returned as ``"name: reason"``.  The file is written atomically.
    """
    layers = list(layers)
    skipped = [f"{l.name}: {why}" for l in layers if (why := scalesim_unsupported(l))]
    if skipped and not skip_unsupported:
        raise ValueError(f"{path}: SCALE-Sim CSV cannot express {len(skipped)} layer(s): " + "; ".join(skipped)
                         + " (skip_unsupported=True writes the others)")
    lines = [", ".join(SCALESIM_HEADER) + ","]
    for l in layers:
        if scalesim_unsupported(l):
            continue
        dims = [(o - 1) * l.stride[0] + k for o, k in zip(l.output_hw, l.kernel_size)]
        lines.append(f"{l.name}, {dims[0]}, {dims[1]}, {l.kernel_size[0]}, {l.kernel_size[1]}, "
                     f"{l.in_channels}, {l.out_channels}, {l.stride[0]},")
    write_text_atomic(path, "\n".join(lines) + "\n")
    return skipped


# --------------------------------------------------------------------------- torch
def from_torch(model: "object", input_shape: Sequence[int]) -> list[Layer]:
    """Conv and linear layers of a torch model, in execution order, named by module path.

    ``input_shape`` is CxHxW or NxCxHxW; the layers are for one image whatever N is.

    Reads dyngate's graph view (the same fx capture that gating and pruning use), so gated,
    pruned and plain models all give their real shapes. torch is imported here only.
    """
    import torch  # noqa: PLC0415 - lazy on purpose: the simulator's hot path has no torch

    from dyngate.graph import capture  # noqa: PLC0415

    shape = tuple(input_shape)
    if (len(shape) not in (3, 4) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                                            for x in shape)):
        raise ValueError(f"from_torch: input_shape must be CxHxW or NxCxHxW positive integers, "
                         f"got {input_shape!r}")
    shape = (1, *shape[-3:])   # the simulator models one image
    try:
        view = capture(model, torch.zeros(*shape))
    except RuntimeError as exc:   # shape mismatch inside the model's forward
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"from_torch: the model does not run on input {list(shape)}: {first}") from None
    layers: list[Layer] = []
    for info in view.layers.values():
        if isinstance(info.padding, str):
            raise ValueError(f"layer {info.name}: string padding {info.padding!r} is not supported")
        layers.append(Layer(*dataclasses.astuple(info.layer_shape)))
    if not layers:
        raise ValueError("model has no Conv2d or Linear layers")
    return layers
