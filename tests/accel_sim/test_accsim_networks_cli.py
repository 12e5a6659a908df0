"""Built-in topologies against the project's torch models, the CLI and the sweep."""
import json

import pytest

from accel_sim import build_network, from_torch
from accel_sim.__main__ import main
from accel_sim.networks import BUILTINS
from netspec.archs import ARCHS


@pytest.mark.parametrize("name,chw", [("resnet18", (3, 64, 64)), ("resnet20", (1, 28, 28)),
                                      ("vgg16", (3, 32, 32)), ("resnet34", (1, 28, 28))])
def test_builtins_match_traced_torch_models(name, chw):
    models = pytest.importorskip("models")
    classes = 1000 if name in ("resnet18", "resnet34") else 10
    model = models.build(name, in_channels=chw[0], num_classes=classes)
    traced = from_torch(model, (1, *chw))
    ours = build_network(name, chw, classes)
    # same layers and shapes; the shortcut conv may run before or after the block's convs
    assert {l.name: l.shape_fields() for l in ours} == {l.name: l.shape_fields() for l in traced}
    assert len(ours) == len(traced)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_matches_its_registered_torch_model(name):
    models = pytest.importorskip("models")
    arch = ARCHS[name]
    traced = from_torch(models.build(name), (3, *arch.input_hw))
    ours = build_network(name)
    assert {l.name: l.shape_fields() for l in ours} == {l.name: l.shape_fields() for l in traced}
    assert len(ours) == len(traced)


def test_builtins_come_from_the_one_registry():
    models = pytest.importorskip("models")
    assert set(BUILTINS) == set(ARCHS) - {"resnet20_postact"}
    assert list(models.REGISTRY) == list(ARCHS)


def test_run_json_keys(capsys):
    assert main(["run", "resnet18", "--density", "0.35", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("dense_cycles", "gated_cycles", "speedup", "theoretical_speedup", "energy_pj", "layers"):
        assert key in out
    assert out["layers"][0]["name"] == "conv1" and out["layers"][0]["cycles"] > 0
    assert out["gated_cycles"] < out["dense_cycles"]


def test_run_compat_topology_csv(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    csv.write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, "
                   "Strides,\nL0, 10, 10, 3, 3, 4, 12, 1,\n")
    assert main(["run", "--topology", str(csv), "--scalesim-compat", "--array", "8x8", "--dataflow", "os",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["compat"] and out["layers"][0]["dense_compute_cycles"] == 799   # SCALE-Sim v2 value


def test_run_errors_and_outputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:   # argparse lists the allowed values
        main(["run", "resnet18", "--dataflow", "rs"])
    assert exc.value.code == 2
    assert "invalid choice: 'rs' (choose from 'os', 'ws', 'is')" in capsys.readouterr().err
    assert main(["run", "resnet20", "--input", "1x28x28", "--density", "0.3",
                 "--csv", str(tmp_path / "l.csv"), "--plot", str(tmp_path / "l.png")]) == 0
    assert "TOTAL" in capsys.readouterr().out
    assert (tmp_path / "l.csv").read_text().startswith("name,kind,gated")
    assert (tmp_path / "l.png").stat().st_size > 1000


def test_sweep_tiny_grid(tmp_path, capsys):
    csv, png = tmp_path / "s.csv", tmp_path / "s.png"
    assert main(["sweep", "resnet20", "--input", "1x16x16", "--arrays", "8x8,16x16", "--dataflows", "os,ws",
                 "--sram-kb", "64", "--densities", "1.0,0.4", "--workers", "2", "--csv", str(csv),
                 "--plot", str(png)]) == 0
    lines = csv.read_text().splitlines()
    assert len(lines) == 1 + 8 and png.stat().st_size > 1000
