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
