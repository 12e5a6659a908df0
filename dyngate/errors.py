"""Errors that name the layer, field or file at fault."""


class DyngateError(Exception):
    """Base class of dyngate's user-facing errors."""


class GraphError(DyngateError):
    """The model cannot be captured or contains an op the channel analysis cannot handle."""


class ConversionError(DyngateError):
    """A convert/prune request names a layer that does not exist or cannot be handled."""


class ProfileError(DyngateError):
    """A sparsity profile is malformed or does not match the model."""


class CheckpointError(DyngateError):
    """A checkpoint is missing, malformed or does not match the architecture."""


class TrainingError(DyngateError):
    """A run cannot continue without producing wrong results (non-finite loss, a resume whose
    configuration differs from the checkpoint's)."""


class DeployError(DyngateError):
    """A model cannot be exported (gated, missing ONNX packages) or its export does not verify."""


class PruningError(ConversionError):
    """A pruning request (criterion, keep set, schedule) cannot give a smaller exact model.
    A ConversionError too: pruning requests were reported as such before."""


class LatencyTableError(DyngateError):
    """A latency table is missing, malformed, or was measured for another model or machine."""


class CompileError(DyngateError):
    """A model cannot be compiled (gated, not fx-traceable, missing TVM, failed build) or its
    compiled output does not match eager torch."""


class ConfigError(DyngateError, ValueError):
    """A run's configuration field (CLI option, YAML key, keyword argument) or an argument of a
    public call (a gated layer's settings, a compiled model's input shape) is invalid.
    Also a ValueError, so callers that caught the bare ValueError keep working."""
