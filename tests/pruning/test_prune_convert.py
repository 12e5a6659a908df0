import torch

import dyngate
import models
from accel_sim.topology import from_torch

X = torch.randn(2, 1, 28, 28)


def _pruned():
    net = models.build("resnet20", in_channels=1).eval()
    return dyngate.prune(net, "l1", 0.4, example_input=X, round_to=4), net


def test_pruned_model_converts_gates_and_profiles():
    pruned, dense = _pruned()
    gated = dyngate.convert(pruned, partitions=4).eval()
    assert gated.dyngate_pruning == pruned.dyngate_pruning  # history survives conversion
    with torch.no_grad(), dyngate.gates_open(gated):
        torch.testing.assert_close(gated(X), pruned(X), rtol=1e-4, atol=1e-5)
    p_dense = dyngate.profile(dense, X).totals
    p_pruned = dyngate.profile(pruned, X).totals
    p_gated = dyngate.profile(gated, X)
    assert p_pruned["dense_macs"] < 0.7 * p_dense["dense_macs"]
    assert p_gated.totals["dense_macs"] == p_pruned["dense_macs"]
    conv = p_gated.layer("layer2.1.conv1")
    assert conv.gated and conv.in_channels == pruned.layer2[1].conv1.in_channels
    assert conv.executed_macs <= conv.dense_macs


def test_accel_sim_reads_the_pruned_topology():
    pruned, dense = _pruned()
    layers = {l.name: l for l in from_torch(pruned, (1, 1, 28, 28))}
    for name in ("conv1", "layer2.0.conv1", "layer3.2.conv2", "fc"):
        m = pruned.get_submodule(name)
        l = layers[name]
        assert (l.in_channels, l.out_channels) == ((m.in_channels, m.out_channels) if name != "fc"
                                                   else (m.in_features, m.out_features))
    dense_layers = {l.name: l for l in from_torch(dense, (1, 1, 28, 28))}
    assert layers["layer3.0.conv1"].out_channels < dense_layers["layer3.0.conv1"].out_channels


def test_prune_for_gating_keeps_widths_every_layer_gates_and_the_fused_kernel_runs(monkeypatch):
    import pytest
    import kernels.cpu_fused as fused
    from dyngate.errors import ConversionError
    from kernels.geometry import ConvGeometry
    net = models.build("resnet20", in_channels=1).eval()
    # without partitions=, FPGM at 0.3 leaves widths like 11/22/44 that partitions=4 cannot split
    with pytest.warns(UserWarning, match=r"not gating \d+ of 9 .*partitions=4\) keeps widths at multiples of 16"):
        dyngate.convert(dyngate.prune(net, "fpgm", 0.3, example_input=X), partitions=4)
    pruned = dyngate.prune(net, "fpgm", 0.3, example_input=X, partitions=4)
    gated = dyngate.convert(pruned, partitions=4)
    names = gated.dyngate_spec["layers"]
    assert len(names) == 9
    assert any(pruned.get_submodule(n).out_channels < net.get_submodule(n).out_channels for n in names)
    for isa in fused.ISAS:   # every ISA's vector layouts accept every gated layer's chunks
        monkeypatch.setattr(fused, "isa", lambda isa=isa: isa)
        for n in names:
            m = pruned.get_submodule(n)
            geo = ConvGeometry(2, m.in_channels, 8, 8, m.out_channels, 3, 3, (1, 1), (1, 1), (1, 1))
            assert fused.layout(geo, 4, True, 1) is not None, (isa, n, m.out_channels)
    with pytest.raises(ConversionError, match="round_to=4 is not a multiple of 16"):
        dyngate.prune(net, "fpgm", 0.3, example_input=X, partitions=4, round_to=4)


def test_global_ranking_that_would_empty_a_group_keeps_the_default_cap():
    """HRank at 0.5 on resnet20 used to refuse ("would remove every channel of group 1")."""
    net = models.build("resnet20", in_channels=1).eval()
    data = [(torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))]
    p = dyngate.prune(net, "hrank", 0.5, example_input=X, data=data)
    for name, m in p.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            full = net.get_submodule(name).out_channels
            assert m.out_channels >= full - int(0.9 * full), name
