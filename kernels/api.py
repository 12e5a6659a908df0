"""Public entry point: validate, pick a backend, run the conditional partial-sum conv."""
from __future__ import annotations

import threading
import warnings

import torch

from kernels.errors import KernelArgError
from kernels.geometry import ConvGeometry, pair
from kernels.reference import conditional_conv2d_reference
from kernels.triton_env import INSTALL_GPU, interpreter_enabled, triton_available

BACKENDS = ("auto", "reference", "cpu", "triton")
_LAST = threading.local()
_WARNED_NO_TRITON: list[bool] = []   # warn once per process


def last_path() -> str | None:
    """Execution path of this thread's last :func:`conditional_conv2d`: "reference", "triton",
    or the CPU path (see :func:`kernels.cpu.last_path`); None before any call."""
    return getattr(_LAST, "path", None)


def validate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tau: torch.Tensor,
             inv_sigma: torch.Tensor, stride, padding, dilation, partitions: int, grouped: bool,
             granularity: int, groups: int = 1, tile=(1, 1)) -> ConvGeometry:
    """Check shapes and divisibility; every error names the offending argument."""
    if groups != 1:
        raise KernelArgError(f"groups={groups}: conv groups other than 1 are not supported by the "
                             "conditional conv (its channel partition is a separate concept)")
    if x.dim() != 4:
        raise KernelArgError(f"x must be 4-D (N, C_in, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise KernelArgError(f"weight must be 4-D (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}")
    n, c_in, h, w = x.shape
    c_out, wc_in, kh, kw = weight.shape
    if wc_in != c_in:
        raise KernelArgError(f"weight has {wc_in} input channels but x has {c_in}")
    for name, t in (("tau", tau), ("inv_sigma", inv_sigma)):
        if t.dim() != 1 or t.shape[0] != c_out:
            raise KernelArgError(f"{name} must have shape ({c_out},) (one per output channel), "
                                 f"got {tuple(t.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != c_out):
        raise KernelArgError(f"bias must have shape ({c_out},), got {tuple(bias.shape)}")
    if not isinstance(partitions, int) or partitions < 1:
        raise KernelArgError(f"partitions must be a positive int, got {partitions!r}")
    if c_in % partitions:
        raise KernelArgError(f"partitions={partitions} does not divide the input channels ({c_in})")
    if c_out % partitions:
        raise KernelArgError(f"partitions={partitions} does not divide the output channels ({c_out})")
    if not isinstance(granularity, int) or granularity < 1 or c_out % granularity:
        raise KernelArgError(f"granularity={granularity!r} must be a positive int dividing "
                             f"the output channels ({c_out})")
    th, tw = pair(tile, "tile")
    if th < 1 or tw < 1:
        raise KernelArgError(f"tile must be positive (output rows, columns per gate block), got {tile!r}")
    for t, name in ((x, "x"), (weight, "weight"), (tau, "tau"), (inv_sigma, "inv_sigma"), (bias, "bias")):
        if t is not None and not t.is_floating_point():  # the fast paths would return zeros
            raise KernelArgError(f"{name} must be a floating-point tensor, got {t.dtype}")
    for t, name in ((weight, "weight"), (tau, "tau"), (inv_sigma, "inv_sigma"), (bias, "bias")):
        if t is not None and t.device != x.device:
            raise KernelArgError(f"{name} is on {t.device} but x is on {x.device}")
    geo = ConvGeometry(n, c_in, h, w, c_out, kh, kw, pair(stride, "stride"), pair(padding, "padding"),
                       pair(dilation, "dilation"))
    if min(geo.stride) < 1 or min(geo.dilation) < 1 or min(geo.padding) < 0:
        raise KernelArgError(f"stride/dilation must be >= 1 and padding >= 0, got stride={stride}, "
                             f"padding={padding}, dilation={dilation}")
    if geo.ho < 1 or geo.wo < 1:
        raise KernelArgError(f"x spatial size {(h, w)} is too small for kernel {(kh, kw)} with "
                             f"padding={padding}, dilation={dilation}")
    return geo


def _no_triton_fallback() -> str:
    if not _WARNED_NO_TRITON:
        _WARNED_NO_TRITON.append(True)
        warnings.warn(f"gated conv on CUDA without triton: running the plain-torch reference "
                      f"(no skipped work); {INSTALL_GPU} for the Triton kernels", RuntimeWarning, stacklevel=4)
    return "reference"


def select_backend(backend: str, device: torch.device) -> str:
    """Resolve "auto" and refuse a backend on a device it cannot run on."""
    if backend not in BACKENDS:
        raise KernelArgError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda":
            return "triton" if triton_available() else _no_triton_fallback()
        return "cpu" if device.type == "cpu" else "reference"
    if backend == "triton" and not triton_available():
        raise KernelArgError(f"backend 'triton' needs the triton package, not installed: {INSTALL_GPU}")
    if backend == "cpu" and device.type != "cpu":
        raise KernelArgError(f"backend 'cpu' needs CPU tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and not (device.type == "cpu" and interpreter_enabled()):
        raise KernelArgError(f"backend 'triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 "
                             f"set before triton is imported), got tensors on {device}")
    return backend


def conditional_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       tau: torch.Tensor, inv_sigma: torch.Tensor, *, stride=1, padding=0,
                       dilation=1, groups: int = 1, partitions: int = 4, grouped: bool = True,
                       granularity: int = 1, tile=(1, 1), backend: str = "auto",
                       return_gate: bool = False):
    """Conditional partial-sum convolution (CGNet inference) that skips gated-off work.

    Same semantics as :func:`kernels.reference.conditional_conv2d_reference`; ``backend``
    is "reference", "cpu" (CPU tensors), "triton" (CUDA tensors, or CPU under the Triton
    interpreter) or "auto" (triton on CUDA, cpu on CPU). ``tile`` (th, tw) with ``granularity``
    G makes one gate decision per block of th x tw output positions x G channels. Inference
    only: when autograd needs gradients (grad mode on and an input requiring grad) the call
    runs the differentiable reference instead, since the fast paths compute no gradients.
    """
    geo = validate(x, weight, bias, tau, inv_sigma, stride, padding, dilation, partitions, grouped,
                   granularity, groups, tile)
    tile = pair(tile, "tile")
    chosen = select_backend(backend, x.device)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, weight, bias, tau, inv_sigma)):
        chosen = "reference"  # the fast paths run under no_grad: their gradients would be lost
    _LAST.path = chosen
    if chosen == "reference":
        return conditional_conv2d_reference(
            x, weight, bias, tau, inv_sigma, stride=geo.stride, padding=geo.padding,
            dilation=geo.dilation, partitions=partitions, grouped=grouped, granularity=granularity,
            tile=tile, return_gate=return_gate)
    with torch.no_grad():
        if chosen == "cpu":
            from kernels.cpu import conditional_conv2d_cpu, last_path as cpu_path
            res = conditional_conv2d_cpu(x, weight, bias, tau, inv_sigma, geo, partitions=partitions,
                                         grouped=grouped, granularity=granularity,
                                         return_gate=return_gate, gate_tile=tile)
            _LAST.path = cpu_path()
            return res
        from kernels.triton_conv import conditional_conv2d_triton
        return conditional_conv2d_triton(x, weight, bias, tau, inv_sigma, geo, partitions=partitions,
                                         grouped=grouped, granularity=granularity, tile=tile,
                                         return_gate=return_gate)


def bind_state() -> tuple:
    """What a call :func:`bind` returned depends on besides its tensors: the thread count, the
    ISA target, whether a C compiler exists, the autotune choices and whether tuning is on.
    A caller keeping a bound call rebinds when this changes."""
    from kernels import autotune, cpu_fused
    return (*cpu_fused.dispatch_state(), autotune.generation(), autotune.enabled())


def bind(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tau: torch.Tensor,
         inv_sigma: torch.Tensor, *, stride=1, padding=0, dilation=1, partitions: int = 4,
         grouped: bool = True, granularity: int = 1, tile=(1, 1), backend: str = "auto"):
    """:func:`conditional_conv2d`'s CPU path for this layer, bound once: a callable ``f(x2)`` that
    returns the output for inputs of ``x``'s shape, dtype and memory layout, running the compiled
    path ``auto`` chose with none of the per-call validation and dispatch (~50 us of Python per
    call, ~0.1 ms right after a large layer's kernel: ~10 % of a 16-channel layer at batch 64).
    None where there is nothing to bind: a backend other than the CPU's, gradients needed, tuning
    off, an input that is not channels-last float32, or a torch-op path chosen.
    The call is valid while ``weight``, ``bias``, ``tau``, ``inv_sigma`` and :func:`bind_state`
    are unchanged: :class:`dyngate.gating.gated_conv.GatedConv2d` keeps one per input signature
    and rebinds when any of them changes."""
    geo = validate(x, weight, bias, tau, inv_sigma, stride, padding, dilation, partitions, grouped,
                   granularity, 1, tile)
    if select_backend(backend, x.device) != "cpu":
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, weight, bias, tau, inv_sigma)):
        return None
    from kernels.cpu import bind_auto
    with torch.no_grad():
        run = bind_auto(x, weight, bias, tau, inv_sigma, geo, partitions=partitions, grouped=grouped,
                        granularity=granularity, gate_tile=pair(tile, "tile"))
    if run is None:
        return None
    path = run.path
    tensors = (weight, bias, tau, inv_sigma)

    def call(x2: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x2.requires_grad or any(t is not None and t.requires_grad
                                                                for t in tensors)):
            raise KernelArgError("bound gated conv: computes no gradients; call it under "
                                 "torch.no_grad() or use conditional_conv2d")
        out = run(x2)
        _LAST.path = path
        return out
    call.path = path
    return call
