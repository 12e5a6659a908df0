"""Compute kernels for the conditional partial-sum convolution."""
from kernels.reference import base_mask, conditional_conv2d_reference, gate_from_partial

__all__ = ["base_mask", "conditional_conv2d_reference", "gate_from_partial"]
