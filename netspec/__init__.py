"""Torch-free network descriptions shared by dyngate, ``models`` and ``accel_sim``: the
layer-shape record with its MAC and parameter counts, the architecture registry and the gating
rule (``netspec.archs``), and the sparsity-profile schema checks, so each is written once."""
from netspec.layer import KINDS, LayerShape, ShapeError, conv_out, is_depthwise, mac_count, param_count
from netspec.profile_schema import READABLE, SCHEMA, VERSION, gate_block_problem, header_problem

__all__ = ["KINDS", "LayerShape", "ShapeError", "conv_out", "is_depthwise", "mac_count", "param_count",
           "READABLE", "SCHEMA", "VERSION", "gate_block_problem", "header_problem"]
