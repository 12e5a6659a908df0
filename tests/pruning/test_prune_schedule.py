import numpy as np
import pytest
import torch
import torch.nn as nn

import dyngate
from dyngate import ConversionError
from dyngate.train.prune_schedule import (ScheduledTrainer, SoftPruningSchedule, add_slimming_penalty,
                                          iterative_prune)
from dyngate.train import TrainConfig

SMALL = dict(model="resnet20", dataset="synthetic", batch_size=64, train_limit=128, test_limit=64,
             lr=0.05, threads=1, augment=False)
X = torch.randn(2, 1, 28, 28)


@pytest.mark.parametrize("mode", ["sfp", "ghfp"])
def test_soft_schedule_zeroes_then_hard_removal_is_exact(tmp_path, mode):
    t = ScheduledTrainer(TrainConfig(**SMALL, epochs=2, out=str(tmp_path)), progress=False)
    sched = SoftPruningSchedule(t.model, "l2", 0.5, example_input=X, epochs=2, mode=mode)
    t.schedule = sched
    hist = t.fit()
    assert len(hist) == 2
    g = sched.view.group_of("layer1.0.conv1")[0]
    gone = np.setdiff1d(np.arange(16), sched.keep[g.id])
    assert len(gone) == 8
    assert t.model.layer1[0].conv1.weight[gone].abs().sum() == 0
    assert t.model.layer1[0].bn1.bias[gone].abs().sum() == 0      # BN shift zeroed too
    if mode == "ghfp":  # by the last epoch every removed row is hard
        assert sched.hard[g.id] == set(gone.tolist())
    model = t.model.eval()
    hard = sched.finalize(model)
    with torch.no_grad():
        torch.testing.assert_close(hard(X), model(X), rtol=1e-4, atol=1e-5)
    assert hard.layer1[0].conv1.out_channels == 8
    assert hard.dyngate_pruning["steps"][0]["meta"]["schedule"] == mode


def test_ghfp_hard_rows_get_no_gradient_and_are_not_revived():
    import models
    net = models.build("resnet20", in_channels=1)
    sched = SoftPruningSchedule(net, "l1", 0.5, example_input=X, epochs=4, mode="ghfp")
    sched.on_epoch_end(net, 0)
    g = sched.view.group_of("layer2.0.conv1")[0]
    hard = sorted(sched.hard[g.id])
    assert len(hard) == 4  # a quarter of the 16 removed rows after epoch 1 of 4
    with torch.no_grad():
        net.layer2[0].conv1.weight[hard] = 5.0  # even if they grew large ...
    net(torch.randn(2, 1, 28, 28)).sum().backward()
    assert net.layer2[0].conv1.weight.grad[hard].abs().sum() == 0
    keep = sched.on_epoch_end(net, 1)
    assert not set(hard) & set(keep[g.id])  # ... they stay removed
    assert len(sched.hard[g.id]) == 8


def test_iterative_prune_reaches_the_target_in_steps():
    import models
    net = models.build("resnet20", in_channels=1).eval()
    calls = []
    out = iterative_prune(net, "l1", 0.5, 3, finetune=lambda m: calls.append(1) or m,
                          example_input=X, scope="local")
    assert len(calls) == 3 and len(out.dyngate_pruning["steps"]) == 3
    # per-step flooring may leave one channel more per group than a one-shot prune (8 / 32)
    assert out.layer1[0].conv1.out_channels in (8, 9) and out.layer3[1].conv1.out_channels in (32, 33)
    with pytest.raises(ConversionError, match="steps"):
        iterative_prune(net, "l1", 0.5, 0, example_input=X)


def test_slimming_penalty_adds_sign_of_gamma():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
    handles = add_slimming_penalty(nn.Sequential(bn), lam=0.1)
    bn(torch.randn(4, 3, 2, 2)).sum().backward()  # d(sum)/d(gamma) = sum of normalized x = 0
    torch.testing.assert_close(bn.weight.grad, torch.tensor([0.1, -0.1, 0.1]), atol=1e-5, rtol=0)
    for h in handles:
        h.remove()


def test_schedule_bad_input():
    import models
    net = models.build("resnet20", in_channels=1)
    with pytest.raises(ConversionError, match="mode"):
        SoftPruningSchedule(net, "l1", 0.5, example_input=X, epochs=2, mode="hard")
    with pytest.raises(ConversionError, match="ratio"):
        SoftPruningSchedule(net, "l1", 1.2, example_input=X, epochs=2)
    with pytest.raises(ConversionError, match="finalize"):
        SoftPruningSchedule(net, "l1", 0.5, example_input=X, epochs=2).finalize(net)


def test_scheduled_trainer_trains_the_given_model(tmp_path):
    import models
    given = dyngate.prune(models.build("resnet20", in_channels=1).train(), "l1", 0.5, example_input=X)
    t = ScheduledTrainer(TrainConfig(**SMALL, epochs=1, out=str(tmp_path)), model=given, progress=False)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit()
    assert t.net is t.model is given
    assert all(not torch.equal(before[k], v) for k, v in t.model.state_dict().items()
               if k.endswith("conv1.weight"))


def test_scheduled_trainer_refuses_gated_runs(tmp_path):
    from dyngate.errors import ConfigError
    with pytest.raises(ConfigError, match="--gated is not supported"):
        ScheduledTrainer(TrainConfig(**SMALL, epochs=1, gated=True, out=str(tmp_path)), progress=False)
