"""Compatibility alias of :mod:`dyngate.pruning.compiler`: ``dyngate.compile`` and
``dyngate.compile.compile`` are :func:`dyngate.pruning.compiler.compile_model` under its old name
(which shadows the builtin ``compile``; new code calls ``compile_model``)."""
from dyngate.pruning.compiler import CompiledModel, InductorModel, TorchModel, deploy_form
from dyngate.pruning.compiler import compile_model as compile  # noqa: A001 (the old public name)

__all__ = ["CompiledModel", "InductorModel", "TorchModel", "compile", "deploy_form"]
