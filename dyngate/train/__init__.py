"""Training on one loop (:mod:`.loop`, optimiser and schedule from :mod:`.optim`, torchrun/DDP
in :mod:`.distributed`): dense and gated runs with the CGNet threshold loss and KD
(:mod:`.trainer`), CUCB dynamic channel execution (:mod:`.cucb`) and soft-pruning schedules
(:mod:`.prune_schedule`). The names below were ``dyngate.train``'s before it became a package."""
from dyngate.train.loop import (RESUME_NEUTRAL, check_finite_loss, check_resume_config, evaluate,
                                kd_loss, write_metrics)
from dyngate.train.optim import param_groups
from dyngate.train.trainer import TrainConfig, Trainer, build_model, config_from_dict, nonfinite_tensors
from models.data import load_dataset

__all__ = ["RESUME_NEUTRAL", "TrainConfig", "Trainer", "build_model", "check_finite_loss",
           "check_resume_config", "config_from_dict", "evaluate", "kd_loss", "load_dataset",
           "nonfinite_tensors", "param_groups", "write_metrics"]
