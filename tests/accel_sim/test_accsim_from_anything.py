"""accel_sim from anything: a custom CNN's profile alone, --partitions, SCALE-Sim .cfg configs,
from_torch input shapes, atomic CSV export that names the layers SCALE-Sim cannot express, the
CLI's help and hint, and the Ray sweep."""
import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import dyngate
from accel_sim import AccelConfig, build_network, from_torch, load_profile, simulate
from accel_sim.__main__ import main
from accel_sim.config import ConfigError, load_config
from accel_sim.profile import layers_from_profile, match_profile, uniform_gates
from accel_sim.sweep import run_sweep, write_sweep_csv
from accel_sim.topology import Layer, read_scalesim_csv, write_scalesim_csv


class MyNet(nn.Module):
    """A user's CNN that is in no registry: residual add, a depthwise conv, a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(torch.relu(self.dw(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def custom_profile(tmp_path_factory):
    torch.manual_seed(0)
    model = dyngate.convert(MyNet(), partitions=4, example_input=torch.zeros(1, 3, 16, 16))
    path = tmp_path_factory.mktemp("prof") / "mynet.yaml"
    dyngate.profile(model, torch.randn(4, 3, 16, 16)).to_yaml(path)
    return path, model


def test_profile_alone_is_the_topology(custom_profile):
    path, model = custom_profile
    prof = load_profile(path)
    layers = layers_from_profile(prof)
    assert layers == from_torch(model, (3, 16, 16))   # same shapes as the model itself
    gates = match_profile(prof, layers)
    assert sorted(gates) == ["a", "b"] and all(g.partitions == 4 for g in gates.values())
    by_name = {e["name"]: e for e in prof.layers}
    for name, g in gates.items():   # densities come from the file, not from a default
        assert np.allclose(g.channel_density, by_name[name]["channel_density"])


def test_cli_profile_alone_matches_api(custom_profile, capsys):
    path, _ = custom_profile
    assert main(["run", "--profile", str(path), "--json"]) == 0
    import json
    out = json.loads(capsys.readouterr().out)
    prof = load_profile(path)
    layers = layers_from_profile(prof)
    want = simulate(layers, AccelConfig(), match_profile(prof, layers)).totals
    assert out["gated_layers"] == 2   # a and b; stem (3 inputs) and the depthwise conv stay dense
    assert out["gated_cycles"] == want["gated_cycles"]
    assert out["dense_cycles"] == want["dense_cycles"]


def test_partitions_option(capsys):
    layers = build_network("resnet20", (1, 28, 28))
    g8 = uniform_gates(layers, 0.5, partitions=8)
    assert g8 and all(g.partitions == 8 for g in g8.values())
    assert main(["run", "resnet20", "--input", "1x28x28", "--density", "0.5", "--partitions", "8",
                 "--no-dense-fallback", "--json"]) == 0
    import json
    cli = json.loads(capsys.readouterr().out)["gated_cycles"]
    cfg = AccelConfig(dense_fallback=False)   # so the gated schedule, not the dense one, is counted
    assert cli == simulate(layers, cfg, g8).totals["gated_cycles"]
    assert cli != simulate(layers, cfg, uniform_gates(layers, 0.5)).totals["gated_cycles"]
    assert main(["run", "resnet20", "--partitions", "8"]) == 2          # without --density
    assert main(["run", "resnet20", "--density", "0.5", "--partitions", "1"]) == 2
    assert "partitions" in capsys.readouterr().err


SCALESIM_CFG = """[general]
run_name = test

[architecture_presets]
ArrayHeight:    16
ArrayWidth:     8
IfmapSramSzkB:    64
FilterSramSzkB:   32
OfmapSramSzkB:    16
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Dataflow : os
Bandwidth : 10
MemoryBanks: 1

[run_presets]
InterfaceBandwidth: CALC
"""


def test_scalesim_cfg_config(tmp_path, capsys):
    p = tmp_path / "scale.cfg"
    p.write_text(SCALESIM_CFG)
    cfg = load_config(p)
    assert (cfg.rows, cfg.cols, cfg.dataflow) == (16, 8, "os")
    assert (cfg.ifmap_sram_kb, cfg.filter_sram_kb, cfg.ofmap_sram_kb) == (64, 32, 16)
    assert cfg.dram_bytes_per_cycle == 10.0   # 10 int8 words per cycle
    assert main(["run", "resnet20", "--config", str(p), "--json"]) == 0
    import json
    assert json.loads(capsys.readouterr().out)["config"]["rows"] == 16
    p.write_text(SCALESIM_CFG.replace("Dataflow : os", "Dataflow : xs"))
    with pytest.raises(ConfigError, match="dataflow"):
        load_config(p)
    p.write_text(SCALESIM_CFG.replace("MemoryBanks: 1", "Banks: 1"))
    with pytest.raises(ConfigError, match="unknown key 'banks'"):
        load_config(p)
    p.write_text("[general]\nrun_name = x\n")
    assert main(["run", "resnet20", "--config", str(p)]) == 2
    assert "architecture_presets" in capsys.readouterr().err


def test_from_torch_input_shapes():
    net = MyNet()
    chw, nchw = from_torch(net, (3, 16, 16)), from_torch(net, (2, 3, 16, 16))
    assert chw == nchw and chw[0].input_hw == (16, 16)
    for bad in [(16, 16), (1, 1, 3, 16, 16), (3, 0, 16), (3, 16.0, 16)]:
        with pytest.raises(ValueError, match="CxHxW or NxCxHxW"):
            from_torch(net, bad)
    with pytest.raises(ValueError, match=r"does not run on input \[1, 1, 16, 16\]"):
        from_torch(net, (1, 16, 16))   # wrong channel count: one line, no fx traceback


def test_scalesim_export_names_depthwise_and_is_atomic(tmp_path):
    layers = from_torch(MyNet(), (3, 16, 16))
    out = tmp_path / "t.csv"
    out.write_text("previous\n")
    with pytest.raises(ValueError, match=r"1 layer\(s\): dw: groups=16"):
        write_scalesim_csv(layers, out)
    assert out.read_text() == "previous\n"                       # untouched, not truncated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]  # no temp file left
    assert write_scalesim_csv(layers, out, skip_unsupported=True) == ["dw: groups=16 (grouped/depthwise conv)"]
    back = read_scalesim_csv(out)
    convs = [l for l in layers if l.groups == 1]   # the linear layer is a 1x1 conv there
    assert [(l.name, l.output_hw) for l in back] == [(l.name, l.output_hw) for l in convs]
    dil = Layer("d", "conv2d", 4, 4, (3, 3), dilation=(2, 2), input_hw=(9, 9))
    with pytest.raises(ValueError, match="dilation"):
        write_scalesim_csv([dil], tmp_path / "d.csv")


def test_bare_run_says_how_to_add_gating():
    r = subprocess.run([sys.executable, "-m", "accel_sim", "run", "resnet20", "--input", "1x28x28"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert "--density" in r.stderr and "--profile" in r.stderr


@pytest.mark.parametrize("cmd", ["run", "sweep", "tables"])
def test_every_option_has_help_default_or_choices(cmd, capsys):
    import argparse
    import accel_sim.__main__ as cli

    captured = {}
    orig = argparse.ArgumentParser.parse_args

    def grab(self, *a, **k):
        captured["ap"] = self
        raise SystemExit(0)
    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(SystemExit):
            cli.main([cmd])
    finally:
        argparse.ArgumentParser.parse_args = orig
    sub = next(a for a in captured["ap"]._actions if isinstance(a, argparse._SubParsersAction))
    for act in sub.choices[cmd]._actions:
        if isinstance(act, argparse._HelpAction):
            continue
        assert act.help, f"{cmd} {act.dest}: no help"
        # a default is printed by the formatter, or the help says what happens without the option
        assert act.default is not None or act.choices or "default" in act.help or "optional" in act.help, \
            f"{cmd} {act.dest}: help states no default"


def test_sweep_csv_atomic_and_ray_matches_process_pool(tmp_path):
    grid = dict(network="resnet20", arrays=["8x8", "16x16"], dataflows=["os", "ws"], sram_kb=[64.0],
                densities=[1.0, 0.5], chw=(1, 28, 28), progress=False)
    pool = run_sweep(**grid, workers=2)
    a, b = tmp_path / "pool.csv", tmp_path / "ray.csv"
    write_sweep_csv(pool, a)
    ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'dyngate[ray]')")
    assert not ray.is_initialized()
    assert main(["sweep", "resnet20", "--input", "1x28x28", "--arrays", "8x8,16x16", "--dataflows", "os,ws",
                 "--sram-kb", "64", "--densities", "1.0,0.5", "--ray", "--csv", str(b), "--plot", ""]) == 0
    assert not ray.is_initialized()   # the local cluster this call started is shut down
    assert a.read_text() == b.read_text()   # same rows, same order as the process pool
    with a.open() as fh:
        assert len(list(csv.DictReader(fh))) == 8
