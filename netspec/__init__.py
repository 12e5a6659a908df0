"""Torch-free network description shared by dyngate and accel_sim: the layer-shape record, its
MAC and parameter counts, and the sparsity-profile schema checks."""
from netspec.layer import KINDS, LayerShape, conv_out, mac_count, param_count
from netspec.profile_schema import READABLE, SCHEMA, VERSION, gate_block_problem, header_problem

__all__ = ["KINDS", "LayerShape", "conv_out", "mac_count", "param_count",
           "READABLE", "SCHEMA", "VERSION", "gate_block_problem", "header_problem"]
