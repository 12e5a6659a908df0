"""The compact model computes what the selected sub-network computed, with fewer parameters."""
import numpy as np
import pytest
import torch

import dyngate
from cucb_helpers import random_selection, tiny_nets
from dyngate.train.cucb import SlicedExecutor, extract, make_plan
from dyngate.train.cucb.extract import count_params


@pytest.mark.parametrize("name,model,x", tiny_nets(), ids=lambda v: v if isinstance(v, str) else "")
def test_extraction_preserves_subnetwork_outputs(name, model, x):
    model.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial BN statistics
            model(torch.randn(8, *x.shape[1:]))
    model.eval()
    view = dyngate.capture(model, x[:1])
    sel = random_selection(view, 0.4, seed=1)
    plan = make_plan(view, sel)
    with torch.no_grad():
        want = SlicedExecutor(view).run(x, plan, train=False).output
    compact = extract(model, x[:1], sel).eval()
    with torch.no_grad():
        got = compact(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert count_params(compact) < count_params(model) / 2
    for layer, info in view.layers.items():  # physically smaller layers
        w = compact.get_submodule(layer).weight
        assert w.shape[0] == len(plan.layer_out[layer])


def test_compact_model_is_a_pruned_checkpoint(tmp_path):
    """Free top-k keep sets (unbalanced option-A pad bands included) go through the static
    surgery; dyngate.save/load round-trip them through the pruning history."""
    import models
    model = models.build("resnet20", in_channels=1, num_classes=10).eval()
    x = torch.randn(2, 1, 28, 28)
    view = dyngate.capture(model, x[:1])
    sel = random_selection(view, 0.5, seed=2)
    compact = extract(model, x[:1], sel).eval()
    assert compact.dyngate_pruning["steps"][-1]["meta"] == {"method": "cucb"}
    dyngate.save(compact, tmp_path / "c.pt")
    again = dyngate.load(tmp_path / "c.pt")
    with torch.no_grad():
        torch.testing.assert_close(again(x), compact(x), rtol=0, atol=0)
    pads = [(m.pad, m.pad_high) for m in compact.modules() if type(m).__name__ == "PadShortcut"]
    assert pads and all(lo + hi > 0 for lo, hi in pads)
