"""dyngate: a dynamic-inference runtime for channel-gated convolutional networks.

Public API: :func:`convert`, :func:`profile`, :func:`prune`, :func:`save`/:func:`load`,
:func:`compile_model` (``compile`` is its old name, kept as an alias), :func:`export`, the
CUCB trainer :class:`CUCBTrainer`, the gate contexts :func:`gates_open`/:func:`gates_closed`,
:func:`gate_loss` and :func:`set_backend`, and :func:`register_channel_op` for a custom
channel-coupling module; the CLI is ``python -m dyngate``.
"""
from dyngate.gating.convert import convert
from dyngate.errors import (CheckpointError, CompileError, ConfigError, ConversionError, DeployError,
                            DyngateError, GraphError, LatencyTableError, ProfileError, PruningError,
                            TrainingError)
from dyngate.gating.gated_conv import GatedConv2d, gate_loss, gates_closed, gates_open, set_backend
from dyngate.graph import ChannelOp, capture, register_channel_op
import dyngate.channel_ops  # noqa: F401 (registers the built-in channel ops: PadShortcut, GatedConv2d)
from dyngate.profile import SparsityProfile, profile
from dyngate.checkpoint import load, save
from dyngate.pruning.prune import prune
from dyngate.compile import compile  # noqa: A001 (compatibility alias of compile_model)
from dyngate.pruning.compiler import compile_model
from dyngate.train.cucb import CUCBTrainer
from dyngate.deploy import export

__all__ = ["convert", "profile", "prune", "compile_model", "compile", "export", "save", "load", "gates_open",
           "gates_closed", "gate_loss", "set_backend", "capture", "register_channel_op", "ChannelOp",
           "GatedConv2d", "SparsityProfile",
           "DyngateError", "GraphError", "ConversionError", "PruningError", "ProfileError", "CheckpointError",
           "TrainingError", "DeployError", "LatencyTableError", "CompileError", "ConfigError", "CUCBTrainer"]
