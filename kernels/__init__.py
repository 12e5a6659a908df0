"""Compute kernels for the conditional partial-sum convolution.

``conditional_conv2d`` dispatches to the plain-torch reference, the CPU fast path
(``kernels.cpu``) or the Triton GPU kernels (``kernels.triton_conv``, imported lazily so that
importing this package never imports triton). Bad arguments raise :class:`KernelArgError`
(a ValueError).
"""
from kernels.api import BACKENDS, bind, bind_state, conditional_conv2d, last_path
from kernels.errors import KernelArgError
from kernels.reference import base_mask, conditional_conv2d_reference, gate_from_partial

__all__ = ["BACKENDS", "KernelArgError", "base_mask", "bind", "bind_state", "conditional_conv2d",
           "conditional_conv2d_reference",
           "gate_from_partial", "last_path"]
