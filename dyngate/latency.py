"""Compatibility alias: latency tables moved to :mod:`dyngate.pruning.latency` (the README's
``from dyngate.latency import LatencyTable, measure`` keeps working)."""
from dyngate.pruning.latency import FORMS, LatencyTable, LayerCurve, measure

__all__ = ["FORMS", "LatencyTable", "LayerCurve", "measure"]
