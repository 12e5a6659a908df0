"""Static pruning through the graph view's channel groups: scoring criteria (:mod:`.criteria`),
keep-set selection and the public :func:`prune` (:mod:`.prune`), physical channel removal and
its replayable history (:mod:`.surgery`), per-layer latency tables (:mod:`.latency`) and the
deployment compile of a pruned model (:mod:`.compiler`). Schedules that prune while training
live in :mod:`dyngate.train.prune_schedule`."""
from dyngate.pruning.latency import LatencyTable, measure
from dyngate.pruning.prune import prune

__all__ = ["LatencyTable", "measure", "prune"]
