"""CUCBTrainer and ``python -m dyngate train --cucb`` on the synthetic set."""
import json

import pytest
import torch

from dyngate.cli import main
import dyngate
from dyngate.train.cucb import CUCBTrainer
from dyngate.train import TrainConfig, evaluate

SMALL = dict(model="resnet20", dataset="synthetic", batch_size=64, train_limit=128,
             test_limit=64, lr=0.05, threads=1, cucb=True, keep=0.5, cucb_warmup=1,
             cucb_finetune=1, augment=False)


def _cfg(tmp_path, name="run", **kw):
    return TrainConfig(**{**SMALL, "out": str(tmp_path / name), **kw})


def test_trainer_phases_macs_and_compact_model(tmp_path):
    t = CUCBTrainer(_cfg(tmp_path, epochs=2), progress=False)
    hist = t.fit()
    assert [r["phase"] for r in hist] == ["cucb", "cucb", "extract", "finetune"]
    first, second = hist[0], hist[1]
    assert first["keep"] == 0.75 and second["keep"] == 0.5   # 2 steps of warm-up
    assert 1.0 < first["train_mac_reduction"] < second["train_mac_reduction"]
    assert second["train_mac_reduction"] > 3.0               # ~1/keep^2 on the convs
    assert second["dense_train_macs"] == pytest.approx(second["train_mac_reduction"] * second["train_macs"])
    dense_params = sum(p.numel() for p in t.dense_model.parameters())
    assert hist[-1]["params"] < dense_params / 3
    # the last bandit epoch evaluates the very sub-network that is extracted (eval-mode BN)
    assert hist[1]["params"] == hist[2]["params"]
    assert hist[1]["test_acc"] == hist[2]["test_acc"]
    assert t.dense_model.training  # evaluate_subnet restores the mode it found
    t.save(str(tmp_path / "final.pt"))
    again = dyngate.load(str(tmp_path / "final.pt"))
    acc, _ = evaluate(again, t.test_set)
    assert acc == hist[-1]["test_acc"]
    with pytest.raises(dyngate.CheckpointError, match="compact CUCB checkpoint"):
        CUCBTrainer(_cfg(tmp_path, "again", epochs=2), progress=False).resume(str(tmp_path / "final.pt"))
    csv_head = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "train_mac_reduction" in csv_head and "inference_macs" in csv_head


def test_bn_recalibration_uses_the_compact_models_batch_statistics(tmp_path):
    t = CUCBTrainer(_cfg(tmp_path, epochs=1, cucb_warmup=0, cucb_finetune=0, cucb_bn_batches=2),
                    progress=False)
    t.fit()
    bn = t.model.bn1  # the stem BN: its input does not depend on other BNs
    x = t.train_set.tensors[0][:128]
    with torch.no_grad():
        y = t.model.conv1(x)
    torch.testing.assert_close(bn.running_mean, y.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 2


def test_resume_restores_bandit_state(tmp_path):
    a = CUCBTrainer(_cfg(tmp_path, "a", epochs=2), progress=False)
    a.fit(stop_after=1)
    b = CUCBTrainer(_cfg(tmp_path, "b", epochs=2), progress=False)
    b.resume(str(tmp_path / "a" / "last.pt"))
    assert b.epoch == 1 and b.bandits.state_dict() == a.bandits.state_dict()
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    c = CUCBTrainer(_cfg(tmp_path, "c", epochs=2, cucb=True), progress=False)
    with pytest.raises(Exception, match="no CUCB bandit state"):
        from dyngate.train import Trainer
        d = Trainer(_cfg(tmp_path, "d", epochs=1, cucb=False), progress=False)
        d.fit()
        c.resume(str(tmp_path / "d" / "last.pt"))


def test_cli_cucb_train(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--cucb", "--keep", "0.5", "--model", "resnet20", "--dataset",
                 "synthetic", "--epochs", "1", "--train-limit", "64", "--test-limit", "32",
                 "--cucb-warmup", "0", "--cucb-finetune", "0", "--threads", "1",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out  # per-epoch lines, then the last row as JSON, then "saved"
    final = json.loads(text[text.index("{\n"):text.index("saved")])
    assert final["phase"] == "extract"
    assert dyngate.load(str(out / "final.pt")) is not None
    assert main(["eval", str(out / "final.pt"), "--json", "--limit", "32"]) == 0  # plain eval reads it
    assert json.loads(capsys.readouterr().out)["images"] == 32


@pytest.mark.parametrize("args,msg", [
    (["--keep", "0"], "--keep must be in (0, 1], got 0.0"),
    (["--keep", "1.5"], "--keep must be in (0, 1], got 1.5"),
    (["--model", "resnet99"], "unknown model 'resnet99'"),
    (["--gated"], "--cucb and --gated are exclusive"),
    (["--ucb-c", "-1"], "--ucb-c must be >= 0"),
])
def test_cli_cucb_bad_arguments(tmp_path, capsys, args, msg):
    assert main(["train", "--cucb", "--dataset", "synthetic", "--out", str(tmp_path / "x"),
                 *args]) == 2
    assert msg in capsys.readouterr().err


def test_finetune_trains_the_compact_model(tmp_path):
    """After extraction the steps run on the compact model (``net`` follows ``model``)."""
    t = CUCBTrainer(_cfg(tmp_path, epochs=1, cucb_warmup=0, cucb_finetune=1), progress=False)
    extracted = {}
    real = t.run_epoch

    def snapshot_then_run(label):   # the last call is the fine-tune epoch
        extracted.update({k: v.clone() for k, v in t.model.state_dict().items()})
        return real(label)

    t.run_epoch = snapshot_then_run
    t.fit()
    assert t.net is t.model
    assert extracted and any(not torch.equal(extracted[k], v) for k, v in t.model.state_dict().items())


def test_cucb_trainer_needs_the_cucb_option(tmp_path):
    from dyngate.errors import ConfigError
    with pytest.raises(ConfigError, match="cfg.cucb = True"):
        CUCBTrainer(_cfg(tmp_path, cucb=False), progress=False)
