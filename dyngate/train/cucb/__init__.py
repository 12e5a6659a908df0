"""CUCB dynamic channel execution for training (after Spasov & Liò 2019; no public code, so
the reward, schedule and extraction rule are our documented choices).

Per prunable channel group a combinatorial-UCB bandit picks which rows (coupled channels) run in
each step (:mod:`.bandit`, reward in :mod:`.reward`); the chosen sub-network runs forward and
backward as smaller dense layers (:mod:`.plan`, :mod:`.sliced`); at the end the most-rewarded
rows become a physically smaller model, through the static-pruning surgery, that is
fine-tuned (:mod:`.extract`, :mod:`.trainer`); ``dyngate.load`` reads it back.
"""
from dyngate.train.cucb.bandit import ChannelBandits, GroupBandit, keep_count, keep_fraction, normalise
from dyngate.train.cucb.extract import extract
from dyngate.train.cucb.plan import SlicePlan, full_selection, make_plan
from dyngate.train.cucb.reward import row_scores, taylor_scores
from dyngate.train.cucb.sliced import SlicedExecutor, sliced_sgd_step
from dyngate.train.cucb.trainer import CUCBTrainer

__all__ = ["ChannelBandits", "GroupBandit", "keep_count", "keep_fraction", "normalise", "extract",
           "SlicePlan", "full_selection", "make_plan",
           "row_scores", "taylor_scores", "SlicedExecutor", "sliced_sgd_step", "CUCBTrainer"]
