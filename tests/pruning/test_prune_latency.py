"""Latency tables and pruning to a latency budget (HALP-style selection)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import dyngate
import models
from dyngate import ConversionError, GraphError, LatencyTableError
from dyngate.graph import capture
from dyngate.pruning.latency import LatencyTable, measure

X = torch.randn(2, 1, 28, 28)


def _step_cost(block: int):
    """A SIMD-like cost model: time grows with the number of ``block``-wide channel blocks."""
    def cost(unit: nn.Module, x: torch.Tensor) -> float:
        layer = unit[0] if isinstance(unit, nn.Sequential) else unit
        if isinstance(layer, nn.Linear):
            return 1e-3 * layer.in_features * layer.out_features
        cin, cout = layer.in_channels, layer.out_channels
        hw = x.shape[2] * x.shape[3]
        return 1e-4 * hw * math.ceil(cin / block) * block * math.ceil(cout / block) * block / layer.groups
    return cost


@pytest.fixture(scope="module")
def table(resnet):
    return measure(resnet, X, batch=2, points=16, progress=False, timer=_step_cost(8))


def _table_ms(table: LatencyTable, model: nn.Module) -> float:
    """Table time of a pruned model, from the widths its layers really have."""
    return table.model_ms({n: (i.in_channels, i.out_channels) for n, i in capture(model, X).layers.items()})


def test_measure_covers_every_layer_and_keeps_fixed_dims(resnet, table):
    view = capture(resnet, X)
    assert set(table.layers) == set(view.layers)
    assert table.layers["conv1"].in_grid == [1]            # the model input is never pruned
    assert table.layers["fc"].out_grid == [10]             # nor the model output
    assert table.layers["layer3.0.conv2"].out_grid[-1] == 64
    assert table.layer_ms("layer1.0.conv1", 16, 16) == pytest.approx(1e-4 * 784 * 16 * 16)
    # between grid points a width costs what the next point up costs
    assert table.layer_ms("layer1.0.conv1", 9, 16) == table.layer_ms("layer1.0.conv1", 16, 16)


def test_wall_clock_measure_runs_and_round_trips(tmp_path):
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 6 * 6, 3)).eval()
    x = torch.randn(1, 1, 6, 6)
    for form in ("eager", "torch"):
        t = measure(m, x, batch=2, points=3, repeats=1, progress=False, form=form)
        assert all(v > 0 for c in t.layers.values() for row in c.ms for v in row)
        t.save(tmp_path / "t.yaml")
        back = LatencyTable.load(tmp_path / "t.yaml")
        assert back.layers == t.layers and back.shapes == t.shapes and back.threads == t.threads
        assert back.meta["form"] == form


def test_torch_form_times_folded_channels_last_units():
    """form="torch" times what dyngate.compile(target="torch") runs: the conv with the BN folded
    into its bias, weights and input channels_last; "eager" times conv + BN in NCHW."""
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 8, 3, padding=1)).eval()
    seen = {}

    def record(unit, x):
        seen.setdefault(form, []).append((unit, x))
        return 1.0

    for form in ("eager", "torch"):
        measure(m, torch.randn(1, 1, 6, 6), batch=2, points=2, progress=False, form=form, timer=record)
    for unit, x in seen["torch"]:
        assert isinstance(unit, nn.Conv2d) and unit.bias is not None
        assert unit.weight.is_contiguous(memory_format=torch.channels_last)
        assert x.is_contiguous(memory_format=torch.channels_last)
    assert any(isinstance(u, nn.Sequential) and isinstance(u[1], nn.BatchNorm2d) for u, _ in seen["eager"])
    with pytest.raises(ConversionError, match="form"):
        measure(m, torch.randn(1, 1, 6, 6), progress=False, form="nhwc", timer=record)


def test_latency_budget_is_met_and_widths_sit_on_blocks(resnet, table):
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    p = dyngate.prune(resnet, "l1", 0.4, example_input=X, latency=table, max_group_ratio=0.75)
    assert _table_ms(table, p) <= 0.6 * table.model_ms() + 1e-6
    # with an 8-wide step cost, a block-internal width off a multiple of 8 buys nothing
    inner = [m.out_channels for n, m in p.named_modules() if n.endswith("conv1") and "layer" in n]
    assert all(c % 8 == 0 for c in inner), inner
    assert p(X).shape == (2, 10)
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())  # input untouched


def test_latency_selection_beats_channel_ranking_at_equal_table_time(resnet, table):
    """At the same table time the latency-aware choice keeps at least as much l1 score as global
    channel ranking: this is what the knapsack is for."""
    lat = dyngate.prune(resnet, "l1", 0.4, example_input=X, latency=table, max_group_ratio=0.75)
    target = _table_ms(table, lat)
    lo, hi = 0.0, 0.74  # bisect a channel ratio to the same table time
    for _ in range(12):
        mid = (lo + hi) / 2
        plain = dyngate.prune(resnet, "l1", mid, example_input=X, max_group_ratio=0.75)
        lo, hi = (mid, hi) if _table_ms(table, plain) > target else (lo, mid)
    plain = dyngate.prune(resnet, "l1", hi, example_input=X, max_group_ratio=0.75)
    assert _table_ms(table, plain) <= target + 1e-6

    def kept_l1(m):
        return sum(float(c.weight.detach().abs().sum()) for c in m.modules() if isinstance(c, nn.Conv2d))
    assert kept_l1(lat) >= kept_l1(plain)


def test_depthwise_layers_are_timed_on_their_diagonal():
    m = nn.Sequential(nn.Conv2d(1, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(2, 1, 6, 6)
    t = measure(m, x, batch=2, points=8, progress=False, timer=_step_cost(4))
    assert t.layers["3"].depthwise and len(t.layers["3"].ms) == len(t.layers["3"].in_grid)
    p = dyngate.prune(m, "l1", 0.5, example_input=x, latency=t)
    dw = p[3]
    assert dw.groups == dw.in_channels == dw.out_channels < 8
    widths = {n: (i.in_channels, i.out_channels) for n, i in capture(p, x).layers.items()}
    assert t.model_ms(widths) <= 0.5 * t.model_ms()
    assert p(x).shape == (2, 3)


def test_bad_latency_inputs_name_what_is_wrong(resnet, table, tmp_path):
    other = models.build("resnet56", in_channels=1).eval()
    with pytest.raises(LatencyTableError, match="layer 'layer1.3.conv1'"):
        dyngate.prune(other, "l1", 0.3, example_input=X, latency=table)
    with pytest.raises(ConversionError, match="scope='global'"):
        dyngate.prune(resnet, "l1", 0.3, scope="local", example_input=X, latency=table)
    with pytest.raises(ConversionError, match="out of reach"):
        dyngate.prune(resnet, "l1", 0.9, example_input=X, latency=table, max_group_ratio=0.25)
    with pytest.raises(ConversionError, match="LatencyTable"):
        dyngate.prune(resnet, "l1", 0.3, example_input=X, latency={"conv1": 1.0})
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: 1\nbatch: 2\nthreads: 1\nshapes: {}\nlayers: {a: {in_grid: [1, 2], out_grid: [1], ms: [[1.0]]}}\n")
    with pytest.raises(LatencyTableError, match="bad.yaml.*layer 'a'"):
        LatencyTable.load(bad)
    (tmp_path / "junk.yaml").write_text("[1, 2")
    with pytest.raises(LatencyTableError, match="junk.yaml"):
        LatencyTable.load(tmp_path / "junk.yaml")
    grouped = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 3, groups=2)).eval()
    with pytest.raises(GraphError, match="module '1'.*grouped conv"):  # the graph view refuses it
        measure(grouped, torch.randn(1, 1, 6, 6), progress=False, timer=_step_cost(4))


def test_latency_history_rebuilds_through_save_and_load(resnet, table, tmp_path):
    p = dyngate.prune(resnet, "fpgm", 0.3, example_input=X, latency=table)
    dyngate.save(p, tmp_path / "p.pt")
    back = dyngate.load(tmp_path / "p.pt").eval()
    np.testing.assert_allclose(back(X).detach(), p.eval()(X).detach(), rtol=0, atol=1e-6)


def test_same_geometry_with_a_fixed_dimension_gets_its_own_grid():
    """Two layers of one geometry, one reading the model input (not varied there): both tables
    are complete."""
    m = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                      nn.Flatten(), nn.Linear(4 * 5 * 5, 2)).eval()
    t = measure(m, torch.randn(1, 4, 5, 5), batch=2, points=4, progress=False, timer=_step_cost(2))
    assert t.layers["0"].in_grid == [4] and t.layers["2"].in_grid == [1, 2, 3, 4]
    assert t.layer_ms("2", 2, 2) < t.layer_ms("2", 4, 4)


class _TwoBlockStream(nn.Module):
    """A residual stream produced by three convs (stem and two blocks), then an inner group
    produced by one conv: conv_c's output, read by conv_d."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(1, 8, 1)
        self.conv_b = nn.Conv2d(8, 8, 1)
        self.conv_b2 = nn.Conv2d(8, 8, 1)
        self.conv_c = nn.Conv2d(8, 8, 1)
        self.conv_d = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        s = self.conv_a(x)
        s = s + self.conv_b(s)
        s = s + self.conv_b2(s)
        return self.conv_d(self.conv_c(s))


def test_latency_knapsack_sums_a_rows_score_over_its_producers():
    """Per ms saved, a stream row (score 1.0, three producers, 39 ms a row in a cin x cout table)
    costs 3/39; an inner row (score 0.5, one producer, 12 ms) costs 0.5/12, so the inner group
    goes first. Scored by the mean alone, the stream row (1/39) would go first."""
    from dyngate.pruning.prune import select_keep_latency
    m = _TwoBlockStream().eval()
    x = torch.randn(1, 1, 4, 4)
    view = capture(m, x)
    t = measure(m, x, batch=1, points=8, progress=False,
                timer=lambda unit, _: float(unit.in_channels * unit.out_channels))
    stream = next(g for g in view.groups if ("conv_b2", "out") in g.members)
    inner = next(g for g in view.groups if ("conv_c", "out") in g.members)
    assert sum(role == "out" for _, role in stream.members) == 3
    scores = {stream.id: np.ones(8), inner.id: np.full(8, 0.5)}
    keep = select_keep_latency(view, scores, 0.1, t)
    assert inner.id in keep and stream.id not in keep
