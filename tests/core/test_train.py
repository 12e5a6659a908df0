"""Trainer and CLI on the synthetic set and a small Fashion-MNIST slice."""
import json
import os

import pytest
import torch

import dyngate
from dyngate.cli import main
from dyngate.train import TrainConfig, Trainer, kd_loss
from models.data import FASHION_MNIST_DIR

SMALL = dict(model="resnet20", dataset="synthetic", batch_size=64, train_limit=256, test_limit=64,
             lr=0.05, threads=1)


def _cfg(tmp_path, **kw):
    return TrainConfig(**{**SMALL, "out": str(tmp_path / "run"), **kw})


def test_a_few_steps_reduce_the_loss(tmp_path):
    t = Trainer(_cfg(tmp_path, epochs=3, augment=False), progress=False)
    hist = t.fit()
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert os.path.exists(tmp_path / "run" / "metrics.csv")
    assert json.load(open(tmp_path / "run" / "metrics.json"))["epochs"][-1]["epoch"] == 3


def test_threshold_loss_moves_delta_toward_target(tmp_path):
    t = Trainer(_cfg(tmp_path, epochs=1, gated=True, target=1.0, gate_lambda=0.5, augment=False),
                progress=False)
    before = torch.cat([m.threshold.detach().clone() for _, m in dyngate.gating.gated_layers(t.model)])
    t.fit()
    after = torch.cat([m.threshold.detach() for _, m in dyngate.gating.gated_layers(t.model)])
    assert (after - 1.0).abs().mean() < 0.5 * (before - 1.0).abs().mean()
    assert t.history[-1]["gated_mac_reduction"] > 1.0


def test_kd_loss_against_teacher(tmp_path):
    s, te = torch.randn(5, 10), torch.randn(5, 10)
    T = 3.0
    p_t = torch.softmax(te / T, 1)
    manual = (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean() * T * T
    assert kd_loss(s, te, T).item() == pytest.approx(manual.item(), rel=1e-5)
    assert kd_loss(te, te, T).item() == pytest.approx(0.0, abs=1e-6)
    # a trainer with a teacher uses it: with kd_weight=1 and student == teacher the loss is the
    # gate-free KD term, zero at the first step
    dense = Trainer(_cfg(tmp_path, epochs=1), progress=False)
    dense.fit()
    teacher_path = str(tmp_path / "run" / "last.pt")
    kd = Trainer(_cfg(tmp_path, epochs=1, teacher=teacher_path, init=teacher_path, kd_weight=1.0,
                      out=str(tmp_path / "kd"), lr=0.0, augment=False), progress=False)
    kd.model.train()
    for m in kd.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # same statistics as the teacher
    x = kd.train_set.tensors[0][:16]
    assert kd_loss(kd.model(x), kd.teacher(x), 4.0).item() == pytest.approx(0.0, abs=1e-4)


def test_resume_continues_bit_identically(tmp_path):
    a = Trainer(_cfg(tmp_path, epochs=2, gated=True, out=str(tmp_path / "a")), progress=False)
    a.fit()
    b = Trainer(_cfg(tmp_path, epochs=2, gated=True, out=str(tmp_path / "b")), progress=False)
    b.fit(stop_after=1)  # interrupted after the first epoch
    c = Trainer(_cfg(tmp_path, epochs=2, gated=True, out=str(tmp_path / "c")), progress=False)
    c.resume(str(tmp_path / "b" / "last.pt"))
    c.fit()
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.history[-1]["train_loss"] == c.history[-1]["train_loss"]


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_slice_learns(tmp_path):
    t = Trainer(TrainConfig(model="resnet20", dataset="fashion-mnist", epochs=2, batch_size=32,
                            train_limit=512, test_limit=256, lr=0.05, threads=1, augment=False,
                            out=str(tmp_path / "f")), progress=False)
    hist = t.fit()
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["test_acc"] > 0.3  # 10 classes: chance is 0.1


def test_cli_train_eval_profile_json(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--model", "resnet20", "--dataset", "synthetic", "--epochs", "1",
                 "--train-limit", "128", "--test-limit", "64", "--gated", "--partitions", "2",
                 "--target", "0.5", "--out", str(out), "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out / "final.pt"), "--json", "--limit", "64"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"accuracy", "mac_reduction", "gated_mac_reduction", "layers"} <= set(res)
    assert 0 <= res["accuracy"] <= 1 and res["mac_reduction"] >= 1
    assert main(["profile", str(out / "final.pt"), "--out", str(tmp_path / "p.yaml"), "--limit", "32"]) == 0
    prof = dyngate.SparsityProfile.from_yaml(tmp_path / "p.yaml")
    prof.check_matches(dyngate.load(out / "final.pt"))


def test_cli_bad_arguments_are_clear(tmp_path, capsys):
    assert main(["train", "--model", "resnet99", "--out", str(tmp_path)]) == 2
    assert "unknown model 'resnet99'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "nodata"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    assert main(["train", "--teacher", str(tmp_path / "t.pt"), "--out", str(tmp_path / "y")]) == 2
    assert "--teacher: checkpoint" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("epochs: [1, 2\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    (tmp_path / "bad2.yaml").write_text("epochz: 3\n")
    assert main(["train", "--config", str(tmp_path / "bad2.yaml")]) == 2
    assert "unknown training option(s): ['epochz']" in capsys.readouterr().err
    (tmp_path / "bad3.yaml").write_text("epochs: three\n")
    assert main(["train", "--config", str(tmp_path / "bad3.yaml")]) == 2
    assert "'epochs' must be int" in capsys.readouterr().err


def test_cli_block_gates_rule_all_dense_accuracy_and_time(tmp_path, capsys):
    """A gated run from a dense --init records that model's accuracy; eval --time reports the
    whole-network wall clock against the dense copy (numbers, not their size: no timed asserts)."""
    dense = tmp_path / "dense"
    assert main(["train", "--model", "resnet20", "--dataset", "synthetic", "--epochs", "1",
                 "--train-limit", "128", "--test-limit", "64", "--out", str(dense), "--threads", "1"]) == 0
    gated = tmp_path / "gated"
    assert main(["train", "--model", "resnet20", "--dataset", "synthetic", "--epochs", "1",
                 "--train-limit", "128", "--test-limit", "64", "--gated", "--rule", "all",
                 "--tile", "4", "4", "--granularity", "8", "--no-grouped", "--init",
                 str(dense / "final.pt"), "--out", str(gated), "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(gated / "final.pt"), "--json", "--limit", "64", "--time",
                 "--time-batch-size", "16", "--time-batches", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    dense_eval = dyngate.train.evaluate(dyngate.load(dense / "final.pt"),
                                        dyngate.train.load_dataset("synthetic", "test", None, 64))[0]
    assert res["dense_accuracy"] == pytest.approx(dense_eval)
    assert res["dense_ms"] > 0 and res["gated_ms"] > 0
    assert res["real_speedup"] == pytest.approx(res["dense_ms"] / res["gated_ms"])
    assert res["batch_size"] == 16 and res["batches"] == 2
    gated_layers = [l for l in res["layers"] if l["gated"]]
    assert len(gated_layers) == 18 and all(l["tile"] == [4, 4] for l in gated_layers)
    assert main(["train", "--tile", "0", "4", "--out", str(tmp_path / "bad")]) == 2
    assert main(["train", "--rule", "some", "--out", str(tmp_path / "bad")]) == 2


def test_one_optimizer_factory_for_every_schedule():
    from dyngate.errors import ConfigError
    from dyngate.train.optim import sgd_with_schedule
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    opt, sched = sgd_with_schedule(net, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="step",
                                   epochs=4, milestones=[2])
    assert opt.defaults["nesterov"] and [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01])
    opt, sched = sgd_with_schedule(net, lr=0.1, momentum=0.9, weight_decay=0.0, schedule="cosine", epochs=2)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="schedule must be one of cosine, step, got 'linear'"):
        sgd_with_schedule(net, lr=0.1, momentum=0.9, weight_decay=0.0, schedule="linear", epochs=2)


def test_bad_options_raise_config_error(tmp_path):
    from dyngate.errors import ConfigError
    from dyngate.train import config_from_dict
    with pytest.raises(ConfigError, match="--momentum must be in"):
        _cfg(tmp_path, momentum=1.0).validate()
    with pytest.raises(ConfigError, match="unknown training option"):
        config_from_dict({"epochz": 3})


def test_gated_init_trains_a_gated_checkpoint_on(tmp_path, capsys):
    """``--init`` of a gated checkpoint continues it: the converted model starts with exactly
    its weights, thresholds and decision statistics, keeps the dense accuracy its first run
    recorded, and a checkpoint converted another way is refused with the field at fault."""
    base = ["train", "--model", "resnet20", "--dataset", "synthetic", "--epochs", "1",
            "--train-limit", "128", "--test-limit", "64", "--threads", "1"]
    gate = ["--gated", "--rule", "all", "--tile", "4", "4", "--granularity", "8", "--no-grouped"]
    assert main(base + ["--out", str(tmp_path / "dense")]) == 0
    first = tmp_path / "first"
    assert main(base + gate + ["--init", str(tmp_path / "dense" / "final.pt"), "--out", str(first)]) == 0
    shipped = tmp_path / "shipped.pt"
    dyngate.train.loop.ship(str(first / "final.pt"), str(shipped))
    assert not set(dyngate.train.loop.RESUME_STATE) & set(dyngate.checkpoint.read(shipped)["extra"]["trainer"])
    assert main(base + gate + ["--init", str(tmp_path / "dense" / "final.pt"), "--resume", str(shipped),
                               "--out", str(tmp_path / "r")]) == 2
    assert "start from it with --init" in capsys.readouterr().err
    cfg = dict(SMALL, train_limit=128, test_limit=64, epochs=1, gated=True, rule="all", tile=[4, 4],
               granularity=8, grouped=False, init=str(shipped), out=str(tmp_path / "on"))
    t = Trainer(TrainConfig(**cfg), progress=False)
    saved = dyngate.checkpoint.read(first / "final.pt")
    state = t.model.state_dict()
    assert set(state) == set(saved["state_dict"])
    assert all(torch.equal(state[k], v) for k, v in saved["state_dict"].items())
    t.fit()
    assert t.dense_accuracy == saved["extra"]["trainer"]["dense_accuracy"] is not None
    capsys.readouterr()
    other = {"tile": gate[:4] + ["2", "2"] + gate[6:],                  # 2x2 blocks
             "layers": gate[:1] + gate[3:],                             # rule cgnet
             "grouped": gate[:-1] + ["--grouped"]}
    for field, args in other.items():
        assert main(base + args + ["--init", str(first / "final.pt"), "--out", str(tmp_path / field)]) == 2
        err = capsys.readouterr().err
        assert f"its gates have {field}=" in err and "final.pt" in err and "Traceback" not in err
    assert main(base + ["--init", str(first / "final.pt"), "--out", str(tmp_path / "dense2")]) == 2
    assert "this checkpoint is gated" in capsys.readouterr().err
