"""Issue #14: nothing lost (atomic checkpoints, metrics after the checkpoint, locked output
folders) and nothing silently wrong (resume with changed options, NaN/inf or negative values,
non-finite losses and weights, one-line CLI errors)."""
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dyngate
import models
from dyngate.cli import main
from dyngate.errors import TrainingError
from dyngate.train import TrainConfig, Trainer, config_from_dict
from fsio import exclusive_lock

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(model="resnet20", dataset="synthetic", batch_size=64, train_limit=128, test_limit=64,
             lr=0.05, threads=1, epochs=2)
CLI_SMALL = ["--model", "resnet20", "--dataset", "synthetic", "--train-limit", "128",
             "--test-limit", "64", "--batch-size", "64", "--threads", "1"]

# the child writes half of the new checkpoint's bytes, says so, and waits to be killed: the
# kill lands inside the save deterministically, not by timing
_KILLED_SAVE = r"""
import io, os, shutil, sys, time, torch, dyngate, models
path = sys.argv[1]
torch.manual_seed(0)
m = models.build("resnet20", in_channels=1, num_classes=10)
dyngate.save(m, path)
shutil.copy(path, path + ".ref")
with torch.no_grad():
    for p in m.parameters():
        p.add_(1.0)
real_save = torch.save
def slow_save(obj, f, *a, **kw):
    buf = io.BytesIO()
    real_save(obj, buf, *a, **kw)
    fh = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    fh.flush()
    print("half", flush=True)
    time.sleep(120)
torch.save = slow_save
dyngate.save(m, path)
"""


def test_sigkill_during_checkpoint_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(path)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "half"
        child.kill()
    finally:
        child.wait()
    assert child.returncode == -9
    assert path.read_bytes() == (tmp_path / "last.pt.ref").read_bytes()
    dyngate.load(path)   # still a whole, loadable checkpoint


def test_metrics_are_written_after_the_checkpoint_they_describe(tmp_path, monkeypatch):
    t = Trainer(TrainConfig(**SMALL, out=str(tmp_path / "run")), progress=False)
    real_save, calls = dyngate.save, []

    def failing_save(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(*a, **kw)

    monkeypatch.setattr(dyngate.train.loop, "save", failing_save)  # what the training loop calls
    with pytest.raises(OSError):
        t.fit()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1]   # epoch 2's weights never reached disk
    assert dyngate.checkpoint.read(tmp_path / "run" / "last.pt")["extra"]["metrics"]["epoch"] == 1
    assert not [f for f in os.listdir(tmp_path / "run") if f.endswith(".tmp")]


def test_second_train_into_a_locked_folder_fails_at_once(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with exclusive_lock(out):
        proc = subprocess.run([sys.executable, "-m", "dyngate", "train", *CLI_SMALL, "--epochs", "1",
                               "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert str(out) in err and "in use by another writer" in err
    assert not (out / "last.pt").exists()


def test_unwritable_outputs_fail_before_the_work(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("")
    import dyngate.cli as cli

    def no_work(*a, **kw):
        raise AssertionError("the long work started before the output path was checked")

    monkeypatch.setattr(cli, "Trainer", no_work)
    monkeypatch.setattr(cli, "_evaluate_checkpoint", no_work)
    assert main(["train", *CLI_SMALL, "--out", str(tmp_path / "afile" / "run")]) == 2
    assert "not writable" in capsys.readouterr().err
    ckpt = tmp_path / "m.pt"
    dyngate.save(models.build("resnet20", in_channels=1, num_classes=10), ckpt)
    assert main(["eval", str(ckpt), "--profile-out", str(tmp_path / "nodir" / "p.yaml")]) == 2
    assert "nodir" in capsys.readouterr().err
    assert main(["profile", str(ckpt), "--out", str(tmp_path / "afile" / "p.yaml")]) == 2
    assert "afile" in capsys.readouterr().err


def test_resume_refuses_changed_options_and_allows_neutral_ones(tmp_path, capsys):
    a = Trainer(TrainConfig(**SMALL, out=str(tmp_path / "a")), progress=False)
    a.fit(stop_after=1)
    last = str(tmp_path / "a" / "last.pt")
    assert main(["train", *CLI_SMALL, "--epochs", "2", "--lr", "0.2", "--seed", "3",
                 "--out", str(tmp_path / "b"), "--resume", last]) == 2
    err = capsys.readouterr().err
    assert "lr (checkpoint 0.05, now 0.2)" in err and "seed" in err and "epochs" not in err
    assert not (tmp_path / "b" / "last.pt").exists()
    with pytest.raises(TrainingError, match="epochs"):
        Trainer(TrainConfig(**{**SMALL, "epochs": 3}, out=str(tmp_path / "c")), progress=False).resume(last)
    # threads and the output folder change nothing in the numbers
    assert main(["train", *CLI_SMALL[:-1], "2", "--epochs", "2", "--lr", "0.05",
                 "--out", str(tmp_path / "d"), "--resume", last]) == 0
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2] and metrics["config"]["lr"] == 0.05
    assert metrics["epochs"][1]["lr"] > 0


@pytest.mark.parametrize("opts, field", [
    ({"lr": math.nan}, "--lr"), ({"lr": math.inf}, "--lr"), ({"momentum": math.nan}, "--momentum"),
    ({"epochs": 0}, "--epochs"), ({"batch_size": 0}, "--batch-size"), ({"batch_size": -3}, "--batch-size"),
    ({"train_limit": -5}, "--train-limit"), ({"test_limit": 0}, "--test-limit"),
    ({"lr": -0.1}, "--lr"), ({"threads": 0}, "--threads"), ({"lr": "fast"}, "'lr'"),
    ({"epochs": True}, "'epochs'"), ({"milestones": [0]}, "--milestones"),
    ({"kd_temperature": 0.0}, "--kd-temperature"),
])
def test_config_values_are_validated_naming_the_field(opts, field):
    with pytest.raises(ValueError, match=field) as e:
        config_from_dict(opts)
    assert "\n" not in str(e.value)


def test_cli_numeric_errors_exit_2_in_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("lr: .nan\n")
    for argv in (["train", "--train-limit", "-5", "--out", str(tmp_path / "r")],
                 ["train", "--epochs", "0", "--out", str(tmp_path / "r")],
                 ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
    ckpt = tmp_path / "m.pt"
    dyngate.save(models.build("resnet20", in_channels=1, num_classes=10), ckpt)
    assert main(["eval", str(ckpt), "--dataset", "synthetic", "--limit", "-5"]) == 2
    assert "--limit" in capsys.readouterr().err
    from models.data import DataError, load_dataset
    with pytest.raises(DataError, match="limit"):   # the loader itself refuses negative limits
        load_dataset("synthetic", "test", limit=-5)


def test_non_finite_loss_stops_the_run_naming_epoch_and_step(tmp_path):
    t = Trainer(TrainConfig(**SMALL, out=str(tmp_path / "run")), progress=False)
    with torch.no_grad():
        t.model.fc.weight.fill_(math.nan)
    with pytest.raises(TrainingError, match=r"epoch 1, step 0: the training loss is nan"):
        t.fit()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_eval_of_nan_weights_reports_no_mac_reduction(tmp_path, capsys):
    m = models.build("resnet20", in_channels=1, num_classes=10)
    g = dyngate.convert(m, partitions=2)
    with torch.no_grad():
        g.get_submodule("layer1.0.conv1").weight.fill_(math.nan)
    ckpt = tmp_path / "nan.pt"
    dyngate.save(g, ckpt)
    assert main(["eval", str(ckpt), "--json", "--dataset", "synthetic", "--limit", "16"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "layer1.0.conv1.weight" in out.err and "NaN" in out.err
    from dyngate.train import evaluate
    from models.data import load_dataset
    with pytest.raises(TrainingError, match="not finite"):   # the Python API refuses too
        evaluate(g.eval(), load_dataset("synthetic", "test", limit=16))


class _ClosedPipe(io.TextIOBase):
    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise io.UnsupportedOperation("no fd")


def test_broken_pipe_exits_quietly(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "m.pt"
    dyngate.save(models.build("resnet20", in_channels=1, num_classes=10), ckpt)
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["eval", str(ckpt), "--json", "--dataset", "synthetic", "--limit", "16"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.undo()
    # and for real: the reader is gone before the JSON is printed
    proc = subprocess.Popen([sys.executable, "-m", "dyngate", "eval", str(ckpt), "--json",
                             "--dataset", "synthetic", "--limit", "16"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""


def test_oserror_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "m.pt"
    dyngate.save(models.build("resnet20", in_channels=1, num_classes=10), ckpt)
    monkeypatch.setattr(dyngate.SparsityProfile, "to_yaml",
                        lambda self, path: (_ for _ in ()).throw(OSError(28, "No space left on device", path)))
    assert main(["profile", str(ckpt), "--dataset", "synthetic", "--limit", "16",
                 "--out", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]   # after the progress bar
    assert last.startswith("error: ") and "No space left" in last and "p.yaml" in last
    assert "Traceback" not in err


def _interrupted_dump(doc, f, **kw):
    f.write("half: [")
    raise KeyboardInterrupt


@pytest.mark.parametrize("which", ["profile", "latency"])
def test_interrupted_yaml_write_keeps_the_previous_file(which, tmp_path, monkeypatch):
    import yaml
    from dyngate.pruning.latency import LatencyTable
    if which == "profile":
        g = dyngate.convert(models.build("resnet20", in_channels=1, num_classes=10), partitions=2).eval()
        obj = dyngate.profile(g, torch.randn(2, 1, 28, 28))
        write = obj.to_yaml
    else:
        obj = LatencyTable(batch=1, threads=1, layers={}, shapes={})
        write = obj.save
    (tmp_path / "o").mkdir()   # tmp_path also holds the test's tune cache
    path = tmp_path / "o" / "out.yaml"
    write(str(path))
    before = path.read_text()
    monkeypatch.setattr(yaml, "safe_dump", _interrupted_dump)
    with pytest.raises(KeyboardInterrupt):
        write(str(path))
    monkeypatch.undo()
    assert path.read_text() == before and yaml.safe_load(before)
    assert os.listdir(tmp_path / "o") == ["out.yaml"]


def test_ctrl_c_is_one_line_exit_130(monkeypatch, capsys):
    import dyngate.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_eval", interrupted)
    assert main(["eval", "some.pt"]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"
