"""``dyngate.export``: a dense or statically pruned model to ONNX, verified with ONNX Runtime.

Exporter: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). It
still works in torch 2.13 (deprecated but present), needs only ``onnx`` (not ``onnxscript``),
exports these nets in about a second where the dynamo exporter takes several, and takes a
plain ``dynamic_axes`` for the batch dimension; the dynamo exporter also tries to down-convert
its opset-18 graph and fails on ``Pad`` for opset 17. torch is pinned, so the choice is stable.

Gated models: a gate decides per input which output channels run, and ONNX has no
conditional-skip convolution, so an exported gated model could only compute *something else*.
By default ``export`` refuses them; ``gates="open"`` exports the gates-open dense equivalent
(every ``GatedConv2d`` back to its ``nn.Conv2d``: the outputs of ``dyngate.gates_open``, none
of the savings). For a model that is smaller on any runtime, use ``dyngate.prune``.
"""
from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from dyngate.errors import DeployError
from dyngate.gating.gated_conv import GatedConv2d
from fsio import check_writable_file, write_bytes_atomic

MIN_OPSET, MAX_OPSET = 9, 20   # what the TorchScript exporter emits (torch.onnx._constants)
DEFAULT_OPSET = 17             # ORT 1.32 runs it; no op these nets use changed after it
# fp32 tolerance of the ORT check: |ort - torch| <= ATOL + RTOL * max|torch|. ORT folds BN into
# the conv weights and sums in its own (MLAS) order, so every output is a different rounding of
# long fp32 sums carried through ~50 layers: measured 1e-6..4e-5 of the output scale on
# ResNet-20/50 and MobileNetV2 (random weights, calibrated BN). 1e-3 is 25x above that, yet a
# wrong op (padding, stride, a lost BN or residual) moves outputs by 1e-2..1 of the scale.
RTOL, ATOL = 1e-3, 1e-5
GATES = ("refuse", "open")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and how well ONNX Runtime reproduced torch on the example."""

    path: str
    opset: int
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    gates: str | None        # None for a dense model, else how the gated model was exported
    max_abs_err: float       # ORT vs torch on the example input (and the 2x batch if dynamic)
    tolerance: float         # ATOL + RTOL * max|torch output|


def _need_onnx():
    try:
        import onnx  # noqa: PLC0415 (optional extra)
        import onnxruntime  # noqa: PLC0415
    except ImportError as e:
        raise DeployError(f"ONNX export needs onnx and onnxruntime ({e.name} is missing): "
                          'pip install -e ".[onnx]"') from None
    return onnx, onnxruntime


def _exportable(model: nn.Module, gates: str) -> tuple[nn.Module, str | None]:
    """A CPU fp32 eval-mode copy to export (the caller's model is not touched)."""
    if gates not in GATES:
        raise DeployError(f"gates must be one of {', '.join(GATES)}, got {gates!r}")
    gated = [n for n, m in model.named_modules() if isinstance(m, GatedConv2d)]
    if gated and gates == "refuse":
        raise DeployError(f"model has {len(gated)} gated layers (first '{gated[0]}'): gate decisions "
                          "are data-dependent and ONNX cannot skip channels per input; pass "
                          "gates='open' (CLI: --gates open) to export the gates-open dense "
                          "equivalent, or export a dyngate.prune'd dense model for a statically "
                          "smaller one")
    if gated:
        from dyngate.gating.timing import to_dense  # noqa: PLC0415 (only for gated models)
        net = to_dense(model)
    else:
        net = copy.deepcopy(model)
    return net.cpu().float().eval(), ("open" if gated else None)


def _verify(ort, graph: bytes, net: nn.Module, xs: list[torch.Tensor]) -> tuple[float, float]:
    """Max abs error of ORT against torch over ``xs`` and the tolerance it must meet."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    err, tol = 0.0, ATOL
    with torch.no_grad():
        for x in xs:
            ref = net(x).numpy()
            got = sess.run(None, {name: x.numpy()})[0]
            if got.shape != ref.shape:
                raise DeployError(f"ONNX Runtime output shape {got.shape} != torch {ref.shape}")
            err = max(err, float(np.max(np.abs(got - ref))))
            tol = max(tol, ATOL + RTOL * float(np.max(np.abs(ref))))
    return err, tol


def export(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, *,
           opset: int = DEFAULT_OPSET, gates: str = "refuse",
           dynamic_batch: bool = False) -> ExportResult:
    """Export ``model`` (eval mode, fp32, CPU copy) to ONNX at ``path`` and verify it.

    The graph is exported in memory, checked with ``onnx.checker``, run with ONNX Runtime on
    ``example_input`` and compared with torch (tolerance: see ``RTOL``); only then is it written
    to ``path`` atomically, so a failed export never leaves a partial or unverified file there. ``dynamic_batch`` makes dim 0 symbolic (then a
    doubled batch is verified too). ``gates``: "refuse" (default) or "open", see the module doc.
    Raises :class:`DeployError` naming the problem.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise DeployError(f"opset must be an integer in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        raise DeployError("example_input must be a floating-point torch.Tensor (a batch, e.g. 1x3x32x32)")
    onnx, ort = _need_onnx()
    net, how = _exportable(model, gates)
    x = example_input.detach().cpu().float().contiguous()
    try:
        with torch.no_grad():
            net(x)
    except RuntimeError as e:   # say it here, not as a tracer error from inside the exporter
        raise DeployError(f"example_input of shape {tuple(x.shape)} does not fit the model: "
                          f"{str(e).splitlines()[0]}") from None
    path = os.fspath(path)
    check_writable_file(path)   # before the export, not after it
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()   # exported and verified in memory; only a verified graph reaches path
    with warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice and constant-folding remarks
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes=axes, do_constant_folding=True)
        except Exception as e:
            raise DeployError(f"torch.onnx.export failed for {type(net).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    graph = buf.getvalue()
    try:
        onnx.checker.check_model(onnx.load_model_from_string(graph))
    except Exception as e:
        raise DeployError(f"exported graph is not valid ONNX: {e}") from e
    xs = [x, torch.cat([x, x.flip(0)])] if dynamic_batch else [x]
    err, tol = _verify(ort, graph, net, xs)
    if not err <= tol:   # also catches NaN
        raise DeployError(f"ONNX Runtime output differs from torch by {err:.3g} (tolerance "
                          f"{tol:.3g}); not writing {path}")
    write_bytes_atomic(path, graph)
    return ExportResult(path, opset, tuple(x.shape), dynamic_batch, how, err, tol)


__all__ = ["export", "ExportResult", "DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET", "RTOL", "ATOL"]
