"""The sliced step is the masked step, computed on smaller layers; optimizer state outside the
kept blocks is untouched."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dyngate
from cucb_helpers import masked_hooks, random_selection, tiny_nets
from dyngate.train.cucb import SlicedExecutor, full_selection, make_plan, sliced_sgd_step
from dyngate.errors import GraphError

TOL = dict(rtol=1e-4, atol=1e-5)  # float32; the two paths sum in different orders


@pytest.mark.parametrize("name,model,x", tiny_nets(), ids=lambda v: v if isinstance(v, str) else "")
def test_sliced_step_equals_masked_step(name, model, x):
    y = torch.randint(0, 3, (len(x),))
    view = dyngate.capture(model, x[:1])
    plan = make_plan(view, random_selection(view, 0.5))
    assert plan.total_macs < make_plan(view, full_selection(view)).total_macs
    masked = copy.deepcopy(model).train()
    mview = dyngate.capture(masked, x[:1])
    handles = masked_hooks(mview, plan)
    ref_loss = F.cross_entropy(masked(x), y)
    ref_loss.backward()
    for h in handles:
        h.remove()
    run = SlicedExecutor(view).run(x, plan, train=True)
    loss = F.cross_entropy(run.output, y)
    loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    params = dict(masked.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(s.param)] for s in run.slices} == set(names.values())
    for s in run.slices:
        ref_grad = s.take(params[names[id(s.param)]].grad)
        torch.testing.assert_close(s.leaf.grad, ref_grad, **TOL)
        assert s.leaf.numel() <= s.param.numel()
    # BN statistics: the kept channels moved exactly like the masked model's
    for mod_name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            ref = dict(masked.named_modules())[mod_name]
            kept = torch.as_tensor(plan.node_kept[_bn_input(view, mod_name)])
            torch.testing.assert_close(m.running_mean[kept], ref.running_mean[kept], **TOL)
            dropped = torch.ones(m.num_features, dtype=torch.bool)
            dropped[kept] = False
            assert (m.running_mean[dropped] == 0).all() and (m.running_var[dropped] == 1).all()


def _bn_input(view, bn_name: str) -> str:
    node = next(n for n in view.graph.graph.nodes if n.op == "call_module" and n.target == bn_name)
    return node.args[0].name


def test_unselected_parameters_and_momentum_stay_untouched():
    _, model, x = tiny_nets()[0]
    y = torch.randint(0, 5, (len(x),))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    F.cross_entropy(model(x), y).backward()
    opt.step()  # every parameter now has a non-zero momentum buffer
    view = dyngate.capture(model, x[:1])
    plan = make_plan(view, random_selection(view, 0.5, seed=3))
    before = {id(p): (p.detach().clone(), opt.state[p]["momentum_buffer"].clone())
              for p in model.parameters()}
    run = SlicedExecutor(view).run(x, plan, train=True)
    F.cross_entropy(run.output, y).backward()
    sliced_sgd_step(opt, run.slices)
    changed_somewhere = False
    for s in run.slices:
        p0, buf0 = before[id(s.param)]
        buf = opt.state[s.param]["momentum_buffer"]
        kept = torch.zeros_like(s.param, dtype=torch.bool)
        s.put(kept, torch.ones_like(s.leaf, dtype=torch.bool))
        assert torch.equal(s.param.detach()[~kept], p0[~kept])   # bit-identical
        assert torch.equal(buf[~kept], buf0[~kept])
        # the kept block follows torch.optim.SGD exactly
        ref = torch.nn.Parameter(s.take(p0).clone())
        ref.grad = s.leaf.grad.clone()
        ref_opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        ref_opt.state[ref]["momentum_buffer"] = s.take(buf0).clone()
        ref_opt.step()
        torch.testing.assert_close(s.take(s.param.detach()), ref.detach(), rtol=0, atol=1e-7)
        torch.testing.assert_close(s.take(buf), ref_opt.state[ref]["momentum_buffer"], rtol=0, atol=1e-7)
        changed_somewhere |= not torch.equal(s.take(s.param.detach()), s.take(p0))
    assert changed_somewhere


def test_first_step_without_buffers_matches_torch_sgd():
    _, model, x = tiny_nets()[1]
    ref_model = copy.deepcopy(model)
    y = torch.randint(0, 3, (len(x),))
    view = dyngate.capture(model, x[:1])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    run = SlicedExecutor(view).run(x, make_plan(view, full_selection(view)), train=True)
    F.cross_entropy(run.output, y).backward()
    sliced_sgd_step(opt, run.slices)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    F.cross_entropy(ref_model(x), y).backward()
    ref_opt.step()
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, **TOL, msg=n)


def test_plan_macs_and_bad_selections():
    _, model, x = tiny_nets()[1]
    view = dyngate.capture(model, x[:1])
    g_c1 = view.group_of("c1")[0].id
    plan = make_plan(view, {g_c1: [0, 2, 4]})  # half of c1's 6 output channels
    # c1: 8x8 out, 3x3, 1 input -> 3 kept outputs; c2 reads 3 of 6 inputs
    assert plan.macs["c1"] == 8 * 8 * 9 * 1 * 3
    assert plan.macs["c2"] == 4 * 4 * 9 * 3 * 8
    assert plan.macs["fc1"] == 128 * 12
    with pytest.raises(GraphError, match="rows must be a non-empty subset of \\[0, 6\\)"):
        make_plan(view, {g_c1: [6]})
    fixed = next(g for g in view.groups if not g.prunable)
    with pytest.raises(GraphError, match=f"group {fixed.id} .* is not prunable"):
        make_plan(view, {fixed.id: [0]})
    with pytest.raises(GraphError, match="group 99"):
        make_plan(view, {99: [0]})


def test_step_activations_are_freed_without_the_cyclic_gc():
    """A training step leaves no reference cycle holding its activations: with the cyclic GC
    off, they are gone as soon as the caller drops the run (a cycle here cost 12 GB of RAM)."""
    import gc
    import weakref

    import models
    model = models.build("resnet20", in_channels=1, num_classes=10).train()
    x = torch.randn(4, 1, 28, 28)
    view = dyngate.capture(model, x[:1])
    plan = make_plan(view, random_selection(view, 0.6, seed=0))
    gc.collect()
    gc.disable()
    try:
        run = SlicedExecutor(view).run(x, plan, train=True, record=True)
        refs = [weakref.ref(t) for t in run.measured.values()] + [weakref.ref(run.output)]
        F.cross_entropy(run.output, torch.zeros(4, dtype=torch.long)).backward()
        del run
        assert all(r() is None for r in refs)
    finally:
        gc.enable()
