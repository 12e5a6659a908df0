"""dyngate: a dynamic-inference runtime for channel-gated convolutional networks.

Public API: :func:`convert`, :func:`profile`, :func:`prune`, :func:`save`/:func:`load`, the
CUCB trainer :class:`CUCBTrainer`, the gate contexts :func:`gates_open`/:func:`gates_closed`,
:func:`gate_loss` and :func:`set_backend`; the CLI is ``python -m dyngate``.
"""
from dyngate.convert import convert
from dyngate.errors import (CheckpointError, ConversionError, DyngateError, GraphError,
                            ProfileError)
from dyngate.gating import GatedConv2d, gate_loss, gates_closed, gates_open, set_backend
from dyngate.graph import capture
from dyngate.profile import SparsityProfile, profile
from dyngate.checkpoint import load, save
from dyngate.prune import prune
from dyngate.compile import compile
from dyngate.cucb import CUCBTrainer
from dyngate.deploy import export

__all__ = ["convert", "profile", "prune", "compile", "save", "load", "gates_open", "gates_closed", "gate_loss",
           "set_backend", "capture", "GatedConv2d", "SparsityProfile", "DyngateError",
           "GraphError", "ConversionError", "ProfileError", "CheckpointError", "CUCBTrainer"]
