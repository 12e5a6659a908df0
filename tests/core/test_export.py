"""dyngate.export / ``python -m dyngate export``: ONNX files that ONNX Runtime runs like torch."""
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import dyngate
import models
from dyngate import deploy
from dyngate.cli import main
from dyngate.errors import DeployError

ort = pytest.importorskip("onnxruntime", reason='onnxruntime not installed: pip install -e ".[onnx]"')
pytest.importorskip("onnx", reason='onnx not installed: pip install -e ".[onnx]"')


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small ops on a shared box: one thread avoids contention (restored afterwards)."""
    n, _ = torch.get_num_threads(), torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _calibrate(m, x):
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = None
    with torch.no_grad():
        m.train()(x)
    return m.eval()


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _check(model, path, x):
    """Independent of export's own check: ORT vs torch within the documented tolerance."""
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    got = _ort(path, x)
    assert got.shape == ref.shape
    assert np.max(np.abs(got - ref)) <= deploy.ATOL + deploy.RTOL * np.max(np.abs(ref))
    return ref


def test_dense_resnet20_matches_and_dynamic_batch(tmp_path):
    x = torch.randn(2, 1, 28, 28)
    m = _calibrate(models.build("resnet20", in_channels=1), torch.randn(8, 1, 28, 28))
    r = dyngate.export(m, tmp_path / "r20.onnx", x, dynamic_batch=True)
    assert r.path == str(tmp_path / "r20.onnx") and r.gates is None and r.opset == deploy.DEFAULT_OPSET
    assert r.max_abs_err <= r.tolerance
    _check(m, r.path, x)
    _check(m, r.path, torch.randn(5, 1, 28, 28))   # symbolic batch
    assert os.listdir(tmp_path) == ["r20.onnx"]     # no temp file left behind
    fixed = dyngate.export(m, tmp_path / "fixed.onnx", x, opset=13)
    sess = ort.InferenceSession(fixed.path, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [2, 1, 28, 28]


def test_pruned_model_exports_smaller(tmp_path):
    x = torch.randn(4, 1, 28, 28)
    dense = _calibrate(models.build("resnet20", in_channels=1), torch.randn(8, 1, 28, 28))
    pruned = dyngate.prune(dense, "fpgm", 0.5, example_input=x)
    d = dyngate.export(dense, tmp_path / "d.onnx", x)
    p = dyngate.export(pruned, tmp_path / "p.onnx", x)
    _check(pruned, p.path, x)
    assert os.path.getsize(p.path) < 0.7 * os.path.getsize(d.path)


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2"])
def test_imagenet_nets_at_small_input(tmp_path, name):
    x = torch.randn(1, 3, 64, 64)
    m = _calibrate(models.build(name, num_classes=10), torch.randn(4, 3, 64, 64))
    r = dyngate.export(m, tmp_path / f"{name}.onnx", x)
    ref = _check(m, r.path, x)
    assert np.max(np.abs(ref)) > 1e-2   # a meaningful comparison, not two near-zero vectors


def test_gated_model_is_refused_unless_gates_open(tmp_path):
    x = torch.randn(2, 1, 28, 28)
    dense = _calibrate(models.build("resnet20", in_channels=1), torch.randn(8, 1, 28, 28))
    gated = dyngate.set_backend(dyngate.convert(dense), "reference").eval()
    with pytest.raises(DeployError, match="gated layers .*data-dependent.*gates='open'.*prune"):
        dyngate.export(gated, tmp_path / "g.onnx", x)
    assert not (tmp_path / "g.onnx").exists()
    r = dyngate.export(gated, tmp_path / "g.onnx", x, gates="open")
    assert r.gates == "open"
    with torch.no_grad(), dyngate.gates_open(gated):
        ref = gated(x).numpy()
    assert np.max(np.abs(_ort(r.path, x) - ref)) <= deploy.ATOL + deploy.RTOL * np.max(np.abs(ref))
    assert any(isinstance(m, dyngate.GatedConv2d) for m in gated.modules())   # caller's model untouched
    with pytest.raises(DeployError, match="gates must be one of"):
        dyngate.export(dense, tmp_path / "x.onnx", x, gates="closed")


def test_failed_export_keeps_the_old_file(tmp_path, monkeypatch):
    x = torch.randn(1, 1, 28, 28)
    m = models.build("resnet20", in_channels=1).eval()
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    monkeypatch.setattr(deploy, "RTOL", -1.0)   # no output can meet a negative tolerance
    monkeypatch.setattr(deploy, "ATOL", -1.0)
    with pytest.raises(DeployError, match="differs from torch"):
        dyngate.export(m, out, x)
    assert out.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.onnx"]


def test_bad_arguments_are_deploy_errors(tmp_path, monkeypatch):
    m = models.build("resnet20", in_channels=1).eval()
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(DeployError, match="opset must be an integer in 9..20"):
        dyngate.export(m, tmp_path / "m.onnx", x, opset=30)
    with pytest.raises(DeployError, match="floating-point torch.Tensor"):
        dyngate.export(m, tmp_path / "m.onnx", x.numpy())
    with pytest.raises(DeployError, match=r"shape \(1, 3, 28, 28\) does not fit"):
        dyngate.export(m, tmp_path / "m.onnx", torch.randn(1, 3, 28, 28))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # as if the extra were not installed
    with pytest.raises(DeployError, match=r'pip install -e "\.\[onnx\]"'):
        dyngate.export(m, tmp_path / "m.onnx", x)
    assert os.listdir(tmp_path) == []


def test_cli_export_of_saved_checkpoints(tmp_path, capsys):
    m = _calibrate(models.build("resnet20", in_channels=1), torch.randn(8, 1, 28, 28))
    pruned = dyngate.prune(m, "l1", 0.3, example_input=torch.randn(4, 1, 28, 28))
    dyngate.save(pruned, tmp_path / "p.pt")
    out = tmp_path / "p.onnx"
    assert main(["export", str(tmp_path / "p.pt"), "--out", str(out), "--batch", "3"]) == 0
    assert "ONNX Runtime vs torch max abs error" in capsys.readouterr().out
    x = torch.randn(3, 1, 28, 28)
    _check(dyngate.load(tmp_path / "p.pt"), out, x)   # default input: 1 channel -> 1x28x28
    dyngate.save(dyngate.convert(m), tmp_path / "g.pt")
    assert main(["export", str(tmp_path / "g.pt"), "--out", str(tmp_path / "g.onnx")]) == 2
    assert "--gates open" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "g.pt"), "--out", str(tmp_path / "g.onnx"),
                 "--gates", "open", "--input", "1x32x32", "--dynamic-batch"]) == 0
    assert "dynamic batch, gates open" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["--input", "1x28"], "--input must be CxHxW"),
    (["--input", "0x28x28"], "--input must be CxHxW"),
    (["--input", "3x28x28"], "does not fit the model"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--opset", "99"], "opset must be an integer"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, msg):
    dyngate.save(models.build("resnet20", in_channels=1), tmp_path / "m.pt")
    assert main(["export", str(tmp_path / "m.pt"), "--out", str(tmp_path / "m.onnx"), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_missing_checkpoint_and_bad_choice(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.pt"), "--out", "m.onnx", "--gates", "shut"]) == 2
    err = capsys.readouterr().err
    assert "--gates" in err and len(err.strip().splitlines()) == 1
