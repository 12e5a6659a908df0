"""accel_sim: a fast cycle-level systolic-array simulator with CGNet channel-gating scheduling
and FPGA/ASIC cost.  ``python -m accel_sim run resnet18``.

The hot path (topology -> closed-form folds -> gating schedule -> memory -> cost) is numpy
only; torch is imported lazily by :func:`accel_sim.topology.from_torch` alone.
"""
from accel_sim.config import AccelConfig, ConfigError, load_config
from accel_sim.networks import build as build_network, cgnet_gated
from accel_sim.profile import (GateSpec, ProfileError, layers_from_profile, load_profile, match_profile,
                               uniform_gates)
from accel_sim.simulate import SimResult, simulate
from accel_sim.topology import Layer, from_torch, read_scalesim_csv

__all__ = ["AccelConfig", "ConfigError", "GateSpec", "Layer", "ProfileError", "SimResult",
           "build_network", "cgnet_gated", "from_torch", "layers_from_profile", "load_config", "load_profile",
           "match_profile", "read_scalesim_csv", "simulate", "uniform_gates"]
