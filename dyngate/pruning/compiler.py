"""``dyngate.compile_model`` (also ``dyngate.compile``): a static (pruned, ungated) model
compiled for deployment.

Three kinds of target.

* ``"torch"``: torch eager in its CPU deployment form, no compiler: BatchNorm folded into the
  conv before it, weights and activations channels_last (NHWC). On x86 oneDNN runs NHWC convs
  (brgemm) directly; an NCHW conv instead reorders its input to a channel-blocked layout and its
  output back on every call, and at widths that are not a multiple of the SIMD block (16 fp32
  lanes with AVX-512) that reorder can cost more than the conv itself (ONEDNN_VERBOSE shows
  ``jit:uni`` reorders of 0.3-5 ms around a 1-3 ms conv at 14x14, batch 64). Pruned models have
  such widths. In this form a single conv loses most of that cliff (``benchmarks/bench_conv_layout.py``)
  and dense ResNet-20 runs 1.2x faster than NCHW eager; whole pruned models still gain less
  latency than MACs, as in every form measured here.
* ``"inductor"``: ``torch.compile`` with Inductor and frozen weights (BatchNorm folded, oneDNN
  weights pre-packed, elementwise ops fused into generated C++), fed channels_last like
  ``"torch"`` (one layout for both targets; Inductor's ratios measured the same either way).
* any TVM target (``"llvm"`` or TVM's dict form): through ``torch.export`` and TVM Relax, for
  deployment where torch is not available; untuned TVM is far slower than torch here, so use it
  for portability, not speed, unless you tune. TVM is optional (``pip install apache-tvm``) and
  imported only here.

Measured numbers for all three are in ``results/pruning_fashion_mnist.md``.

Shapes are static for the compiled targets: they take inputs shaped like ``example_input``. Every
target checks the compiled output against eager torch on ``example_input``; a mismatch is an error.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dyngate.errors import CompileError, ConfigError
from dyngate.gating.gated_conv import GatedConv2d


def _check_shape(x: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Compiled targets are static: they run only inputs shaped like the example input."""
    if tuple(x.shape) != shape:
        raise ConfigError(f"compiled for input shape {shape}, got {tuple(x.shape)}")


@dataclass
class CompiledModel:
    """A TVM Relax executable plus what it was checked against."""

    vm: Any
    device: Any
    input_shape: tuple[int, ...]
    target: Any
    max_abs_error: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_shape(x, self.input_shape)
        import tvm  # noqa: PLC0415
        arr = x.detach().cpu().contiguous().numpy()
        inp = tvm.runtime.tensor(arr, self.device) if hasattr(tvm.runtime, "tensor") else tvm.nd.array(arr, self.device)
        out = self.vm["main"](inp)
        if not hasattr(out, "numpy"):  # Relax returns a tuple for the exported program's outputs
            out = out[0]
        return torch.from_numpy(np.asarray(out.numpy()))


@dataclass
class InductorModel:
    """A ``torch.compile`` (Inductor, frozen weights) function of a static model, run in
    inference mode. The weights are those of the model at compile time."""

    fn: Any
    input_shape: tuple[int, ...]
    max_abs_error: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_shape(x, self.input_shape)
        with _inductor_context():  # a guard-triggered recompile must be frozen and counted too
            return self.fn(x.contiguous(memory_format=torch.channels_last))


@dataclass
class TorchModel:
    """A static model in torch's CPU deployment form (BatchNorm folded, channels_last), run in
    inference mode; any batch size. The weights are copies taken at compile time."""

    module: nn.Module
    max_abs_error: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x.contiguous(memory_format=torch.channels_last))


def deploy_form(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the conv before it
    (:func:`dyngate.gating.fold.fold_batchnorm`, which gated models are timed with too) and its
    weights channels_last. The input model is not modified."""
    from dyngate.gating.fold import fold_batchnorm  # noqa: PLC0415
    try:
        folded, _ = fold_batchnorm(model)
    except Exception as e:  # fx tracing errors name the op; keep them, and name the stage
        raise CompileError(f"compile: folding BatchNorm needs a torch.fx-traceable model: "
                           f"{type(e).__name__}: {str(e)[:300]}") from e
    return folded.to(memory_format=torch.channels_last)


def compile_model(model: nn.Module, target: str | dict = "llvm", *, example_input: torch.Tensor,
                  rtol: float = 1e-4, atol: float = 1e-4) -> CompiledModel | InductorModel | TorchModel:
    """Compile ``model`` (eval mode) for ``target`` and check it against torch on ``example_input``.

    ``"torch"``: the deployment form in eager torch (see the module docstring); no compiler.
    ``"inductor"``: ``torch.compile`` with weight freezing (needs a C++ compiler). Anything else is
    a TVM target: export with ``torch.export``, import into TVM Relax and build for ``target``
    ("llvm", or TVM's dict form such as {"kind": "llvm", "mcpu": "skylake-avx512"}: TVM 0.27 no
    longer parses "llvm -mcpu=..." strings). Gated models are refused (their conditional kernels
    are torch/Triton code; prune statically, compile, and gate in torch)."""
    gated = [n for n, m in model.named_modules() if isinstance(m, GatedConv2d)]
    if gated:
        raise CompileError(f"compile: layer '{gated[0]}' is a GatedConv2d; only static (pruned, "
                           "ungated) models are compiled")
    if target == "torch":
        return _checked(TorchModel(deploy_form(model), 0.0), _reference(model, example_input), example_input,
                        "torch", rtol, atol)
    if target == "inductor":
        return _inductor(model, example_input, rtol, atol)
    try:
        import tvm  # noqa: PLC0415
        from tvm import relax  # noqa: PLC0415
        from tvm.relax.frontend.torch import from_exported_program  # noqa: PLC0415
    except ImportError as e:
        raise CompileError(f"compile needs TVM with Relax (pip install apache-tvm): {e}") from e
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = model(example_input)
            try:
                exported = torch.export.export(model, (example_input,))
            except Exception as e:  # export errors are long; name the stage
                raise CompileError(f"compile: torch.export failed: {type(e).__name__}: {e}") from e
        mod = from_exported_program(exported, keep_params_as_input=False)
        try:
            tgt = tvm.target.Target(target)
        except Exception as e:
            raise CompileError(f"compile: bad TVM target {target!r}: {e}") from e
        vm = relax.VirtualMachine(relax.build(mod, target=tgt), tvm.cpu())
    finally:
        model.train(was)
    return _checked(CompiledModel(vm, tvm.cpu(), tuple(example_input.shape), target, 0.0), ref, example_input,
                    "TVM", rtol, atol)


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eager eval-mode output of ``model`` on ``x``, leaving its train/eval flag as it was."""
    was = model.training
    try:
        with torch.inference_mode():
            return model.eval()(x)
    finally:
        model.train(was)


def _checked(compiled, ref: torch.Tensor, x: torch.Tensor, what: str, rtol: float, atol: float):
    """``compiled`` with its max_abs_error against ``ref`` on ``x`` filled in; an error past
    rtol/atol."""
    out = compiled(x)
    compiled.max_abs_error = float((out - ref).abs().max())
    if not torch.allclose(out, ref, rtol=rtol, atol=atol):
        raise CompileError(f"compile: {what} output differs from torch by up to "
                           f"{compiled.max_abs_error:.3g} (rtol={rtol}, atol={atol})")
    return compiled


@contextlib.contextmanager
def _inductor_context():
    """Frozen weights, inference mode, and no silent eager fallback. Every instance of a model
    class adds entries to its forward's dynamo cache; past the recompile limit (8) dynamo would
    run eagerly without a word, so the limit is lifted and hitting it is an error."""
    import torch._dynamo.config as dynamo_config  # noqa: PLC0415
    import torch._inductor.config as inductor_config  # noqa: PLC0415
    with inductor_config.patch(freezing=True), \
            dynamo_config.patch(recompile_limit=1 << 16, fail_on_recompile_limit_hit=True), \
            torch.inference_mode():
        yield


def _inductor(model: nn.Module, example_input: torch.Tensor, rtol: float, atol: float) -> InductorModel:
    ref = _reference(model, example_input)
    frozen = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    # fullgraph: a graph break would leave part of the model in eager
    fn = torch.compile(frozen, backend="inductor", dynamic=False, fullgraph=True)
    compiled = InductorModel(fn, tuple(example_input.shape), 0.0)
    try:
        compiled(example_input)  # compiles here, for this shape and layout
    except Exception as e:  # Inductor errors are long; name the stage
        raise CompileError(f"compile: torch.compile (Inductor) failed: {type(e).__name__}: "
                           f"{str(e)[:500]}") from e
    return _checked(compiled, ref, example_input, "Inductor", rtol, atol)
