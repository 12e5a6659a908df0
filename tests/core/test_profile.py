import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

import dyngate
import models
from dyngate import ProfileError, SparsityProfile


def _gated(name="resnet20", **kw):
    g = dyngate.convert(models.build(name, in_channels=1, num_classes=10), **kw)
    return dyngate.set_backend(g, "reference").eval()


@pytest.mark.parametrize("name,size", [("resnet20", 28), ("resnet18", 64), ("vgg16", 32),
                                       ("mobilenetv2", 32)])
def test_dense_macs_match_torch_flop_counter(name, size):
    dense = models.build(name, in_channels=1, num_classes=10).eval()
    x = torch.randn(1, 1, size, size)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        dense(x)
    prof = dyngate.profile(dense, x)
    assert 2 * prof.totals["dense_macs"] == fc.get_total_flops()


def test_executed_macs_follow_measured_density():
    g = _gated()
    x = torch.randn(6, 1, 28, 28)
    p = dyngate.profile(g, x)
    dense_total = p.totals["dense_macs"]
    for l in p.layers:
        if l.gated:
            cond = l.dense_macs - l.base_macs
            assert l.base_macs * l.partitions == l.dense_macs
            assert l.executed_macs == pytest.approx(l.base_macs + l.density * cond)
            assert sum(l.channel_density) / l.out_channels == pytest.approx(l.density)
    with dyngate.gates_closed(g):
        closed = dyngate.profile(g, x)
    assert closed.totals["dense_macs"] == dense_total
    assert closed.totals["gated_mac_reduction"] == pytest.approx(4.0)
    with dyngate.gates_open(g):
        assert dyngate.profile(g, x).totals["executed_macs"] == pytest.approx(dense_total)
    # thresholds far below every score: every gate on, executed == dense
    with torch.no_grad():
        for _, m in dyngate.gating.gated_layers(g):
            m.threshold.fill_(-1e6)
    p_on = dyngate.profile(g, x)
    assert p_on.totals["executed_macs"] == pytest.approx(dense_total)
    for _, m in dyngate.gating.gated_layers(g):
        with torch.no_grad():
            m.threshold.fill_(1e6)
    p_off = dyngate.profile(g, x)
    assert p_off.totals["gated_mac_reduction"] == pytest.approx(4.0)


def test_profile_accepts_a_loader_and_counts_images():
    g = _gated()
    loader = [(torch.randn(4, 1, 28, 28), torch.zeros(4)) for _ in range(3)]
    p = dyngate.profile(g, loader)
    assert p.samples == 12 and p.input_shape == [1, 1, 28, 28]


def test_yaml_round_trip_and_model_match(tmp_path):
    g = _gated()
    p = dyngate.profile(g, torch.randn(4, 1, 28, 28))
    path = tmp_path / "p.yaml"
    p.to_yaml(path)
    q = SparsityProfile.from_yaml(path)
    assert q.totals == pytest.approx(p.totals)
    q.check_matches(g)
    raw = yaml.safe_load(path.read_text())
    assert raw["schema"] == "dyngate.sparsity_profile" and raw["version"] == 2
    with pytest.raises(ProfileError, match="profile layer 'layer1.0.conv1': gated=True"):
        q.check_matches(models.build("resnet20", in_channels=1, num_classes=10))
    with pytest.raises(ProfileError, match="model layer 'features.0' is missing"):
        q.check_matches(models.build("vgg16", in_channels=1))


def _write(tmp_path, data):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_malformed_profiles_are_clear_errors(tmp_path):
    good = dyngate.profile(_gated(), torch.randn(2, 1, 28, 28)).to_dict()
    cases = [
        ({**good, "version": 7}, "unsupported profile version"),
        ({**good, "schema": "x"}, "field 'schema'"),
        ({**good, "layers": []}, "field 'layers'"),
        ({**good, "samples": "many"}, "field 'samples' must be an integer"),
    ]
    l1 = dict(good["layers"][1]); l1.pop("density")
    cases.append(({**good, "layers": [good["layers"][0], l1]}, r"layers\[1\] \('layer1.0.conv1'\): missing field 'density'"))
    l1 = dict(good["layers"][1], channel_density=[0.5])
    cases.append(({**good, "layers": [good["layers"][0], l1]}, "channel_density"))
    l1 = dict(good["layers"][1], stride="2")
    cases.append(({**good, "layers": [good["layers"][0], l1]}, "field 'stride' must be a list"))
    l1 = dict(good["layers"][1], density=1.5)
    cases.append(({**good, "layers": [good["layers"][0], l1]}, r"'density' must be in \[0, 1\]"))
    for data, msg in cases:
        with pytest.raises(ProfileError, match=msg):
            SparsityProfile.from_yaml(_write(tmp_path, data))
    (tmp_path / "broken.yaml").write_text("layers: [unclosed")
    with pytest.raises(ProfileError, match="broken.yaml: not valid YAML"):
        SparsityProfile.from_yaml(tmp_path / "broken.yaml")
    with pytest.raises(ProfileError, match="not found"):
        SparsityProfile.from_yaml(tmp_path / "missing.yaml")


def test_version1_profile_reads_as_per_element_gates(tmp_path):
    """Version 2 added ``tile``/``block_density``; a version 1 file is per-element by definition,
    and with equal-size (1x1 x G) blocks the block density equals the element density."""
    g = _gated(granularity=2)
    p = dyngate.profile(g, torch.randn(3, 1, 28, 28))
    for l in p.layers:
        if l.gated:
            assert l.tile == [1, 1]
            assert l.block_density == pytest.approx(l.density, abs=1e-12)
    d = p.to_dict()
    d["version"] = 1
    for l in d["layers"]:
        l.pop("tile", None), l.pop("block_density", None)
    back = SparsityProfile.from_dict(d)
    assert [l.tile for l in back.layers if l.gated] == [[1, 1]] * 9
    assert [l.block_density for l in back.layers if l.gated] == [l.density for l in back.layers if l.gated]
    d["version"] = 3
    with pytest.raises(ProfileError, match="unsupported profile version"):
        SparsityProfile.from_dict(d)
