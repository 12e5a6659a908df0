"""Combinatorial UCB (Chen, Wang & Yuan, ICML 2013) over the rows of one channel group.

Each base arm is one removable unit of a prunable :class:`~dyngate.graph.ChannelGroup` (a row:
the coupled channels of all its layers). A round plays a *super-arm*: the ``k`` arms with the
largest optimistic index ``mu_hat_i + sqrt(c * ln t / T_i)``; arms never played have an infinite
index, so every arm is tried before any is played twice. Feedback is semi-bandit: only the
played arms' statistics move. The oracle for a cardinality constraint is exact top-k, so the
standard CUCB guarantees apply to rewards in [0, 1] (c = 3/2 is the paper's constant).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from dyngate.errors import ConfigError


class GroupBandit:
    """Arm statistics and the top-k oracle of one channel group.

    Ties in the index are broken by the lower row number, which keeps runs deterministic for a
    seed (there is no randomness in CUCB itself).
    """

    def __init__(self, n_arms: int, c: float = 1.5) -> None:
        if n_arms < 1:
            raise ConfigError(f"a group bandit needs at least one arm, got {n_arms}")
        if c < 0:
            raise ConfigError(f"exploration constant c must be >= 0, got {c}")
        self.n, self.c = n_arms, float(c)
        self.counts = np.zeros(n_arms, dtype=np.int64)   # T_i
        self.means = np.zeros(n_arms, dtype=np.float64)  # mu_hat_i
        self.t = 0                                        # rounds played so far

    def index(self, t: int | None = None) -> np.ndarray:
        """The optimistic index of every arm at round ``t`` (default: the next round)."""
        t = self.t + 1 if t is None else t
        played = self.counts > 0
        bonus = np.zeros(self.n)
        bonus[played] = np.sqrt(self.c * np.log(max(t, 1)) / self.counts[played])
        return np.where(played, self.means + bonus, np.inf)

    def select(self, k: int) -> np.ndarray:
        """The ``k`` arms with the largest index, as sorted row numbers (the super-arm)."""
        if not 1 <= k <= self.n:
            raise ConfigError(f"k must be in [1, {self.n}], got {k}")
        idx = self.index()
        order = np.lexsort((np.arange(self.n), -idx))  # by index desc, then by row asc
        return np.sort(order[:k])

    def best(self, k: int) -> np.ndarray:
        """The ``k`` arms with the highest empirical mean (exploitation only), sorted."""
        if not 1 <= k <= self.n:
            raise ConfigError(f"k must be in [1, {self.n}], got {k}")
        order = np.lexsort((np.arange(self.n), -self.means))
        return np.sort(order[:k])

    def update(self, played: np.ndarray, rewards: np.ndarray) -> None:
        """Semi-bandit feedback: one round; incremental means for the played arms only."""
        played = np.asarray(played, dtype=np.int64)
        rewards = np.asarray(rewards, dtype=np.float64)
        if played.shape != rewards.shape:
            raise ConfigError(f"{len(played)} played arms but {len(rewards)} rewards")
        if len(np.unique(played)) != len(played):
            raise ConfigError("an arm was reported twice in one round")
        if not np.all(np.isfinite(rewards)) or rewards.min(initial=0) < 0 or rewards.max(initial=0) > 1:
            raise ConfigError(f"rewards must be finite and in [0, 1], got {rewards}")
        self.t += 1
        self.counts[played] += 1
        self.means[played] += (rewards - self.means[played]) / self.counts[played]

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "c": self.c, "t": self.t, "counts": self.counts.tolist(),
                "means": self.means.tolist()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        if st["n"] != self.n:
            raise ConfigError(f"bandit state has {st['n']} arms, this group has {self.n}")
        self.c, self.t = float(st["c"]), int(st["t"])
        self.counts = np.asarray(st["counts"], dtype=np.int64)
        self.means = np.asarray(st["means"], dtype=np.float64)


def normalise(scores: np.ndarray) -> np.ndarray:
    """Per-group reward normalisation to [0, 1]: divide by the round's largest score.

    Dividing by the maximum (not min-max) keeps a ratio scale: an arm worth half the best arm
    gets 0.5 whatever the layer's activation magnitude. A round in which no arm mattered (all
    scores zero, e.g. dead ReLUs) gives 0 to all.
    """
    scores = np.abs(np.asarray(scores, dtype=np.float64))
    top = scores.max(initial=0.0)
    return scores / top if top > 0 else np.zeros_like(scores)


def keep_count(size: int, keep: float) -> int:
    """How many of a group's ``size`` arms a keep fraction plays (at least one)."""
    if not 0 < keep <= 1:
        raise ConfigError(f"keep fraction must be in (0, 1], got {keep}")
    return max(1, min(size, int(round(keep * size))))


def keep_fraction(step: int, warmup_steps: int, target: float) -> float:
    """Linear anneal from 1.0 at step 0 to ``target`` at ``warmup_steps`` (then constant).

    Starting dense lets every arm collect rewards from a network in which all channels train,
    before the bandit has to choose; shrinking gradually avoids a sudden loss of capacity.
    """
    if warmup_steps <= 0:
        return target
    return 1.0 - (1.0 - target) * min(1.0, step / warmup_steps)


class ChannelBandits:
    """One :class:`GroupBandit` per prunable group; plays the same keep fraction in each.

    ``select`` is the CUCB oracle (explore + exploit) used for training steps; ``best`` is the
    exploitation-only choice used to evaluate the current sub-network and to extract the
    compact model at the end.
    """

    def __init__(self, group_sizes: dict[int, int], c: float = 1.5) -> None:
        self.bandits = {gid: GroupBandit(n, c) for gid, n in group_sizes.items()}

    def select(self, keep: float) -> dict[int, np.ndarray]:
        return {gid: b.select(keep_count(b.n, keep)) for gid, b in self.bandits.items()}

    def best(self, keep: float) -> dict[int, np.ndarray]:
        return {gid: b.best(keep_count(b.n, keep)) for gid, b in self.bandits.items()}

    def update(self, selection: dict[int, np.ndarray], raw_scores: dict[int, np.ndarray]) -> None:
        """Normalise each group's raw scores to [0, 1] and update its played arms."""
        for gid, rows in selection.items():
            self.bandits[gid].update(rows, normalise(raw_scores[gid]))

    def state_dict(self) -> dict[str, Any]:
        return {str(gid): b.state_dict() for gid, b in self.bandits.items()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        if set(st) != {str(g) for g in self.bandits}:
            raise ConfigError(f"bandit state covers groups {sorted(st)}, the model has "
                             f"{sorted(self.bandits)}")
        for gid, b in self.bandits.items():
            b.load_state_dict(st[str(gid)])
