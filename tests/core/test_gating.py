"""GatedConv2d against the plain-torch reference (kernels.reference) on the same inputs.

Tolerances: fp32, 1e-5 absolute on unit-scale activations unless stated.
"""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import dyngate
from dyngate.gating.gated_conv import GatedConv2d
from kernels.reference import base_mask, conditional_conv2d_reference


def _layer(cin, cout, k=3, stride=1, padding=1, p=4, grouped=True, granularity=1):
    conv = torch.nn.Conv2d(cin, cout, k, stride, padding, bias=False)
    g = GatedConv2d.from_conv(conv, name="t", partitions=p, grouped=grouped, granularity=granularity)
    with torch.no_grad():
        g.bn0.running_mean.uniform_(-0.5, 0.5)
        g.bn0.running_var.uniform_(0.5, 2.0)
        g.threshold.uniform_(-0.5, 0.5)
    dyngate.set_backend(g, "reference")
    return conv, g.eval()


shapes = st.tuples(st.sampled_from([4, 8, 12]), st.sampled_from([4, 8, 16]), st.sampled_from([1, 3]),
                   st.sampled_from([1, 2]), st.integers(0, 1), st.sampled_from([2, 4]), st.booleans(),
                   st.integers(5, 9))


@settings(max_examples=25, deadline=None)
@given(shapes)
def test_open_closed_identities_on_random_shapes(s):
    cin, cout, k, stride, pad, p, grouped, hw = s
    conv, g = _layer(cin, cout, k, stride, pad, p, grouped)
    x = torch.randn(2, cin, hw, hw)
    with torch.no_grad():
        with dyngate.gates_open(g):
            torch.testing.assert_close(g(x), conv(x), atol=1e-5, rtol=0)
        with dyngate.gates_closed(g):
            m = base_mask(cout, cin, p, grouped)
            torch.testing.assert_close(g(x), F.conv2d(x, conv.weight * m, None, stride, pad),
                                       atol=1e-5, rtol=0)
        # thresholds far below / above every score give the open / closed network
        g.threshold.fill_(-1e6)
        torch.testing.assert_close(g(x), conv(x), atol=1e-5, rtol=0)
        g.threshold.fill_(1e6)
        torch.testing.assert_close(g(x), F.conv2d(x, conv.weight * m, None, stride, pad), atol=1e-5, rtol=0)


@settings(max_examples=15, deadline=None)
@given(shapes, st.sampled_from([1, 2, 4]))
def test_eval_path_matches_reference_and_unfolded_decision(s, granularity):
    cin, cout, k, stride, pad, p, grouped, hw = s
    _, g = _layer(cin, cout, k, stride, pad, p, grouped, granularity)
    x = torch.randn(2, cin, hw, hw)
    dyngate.set_backend(g, "reference")
    with torch.no_grad():
        tau, inv_sigma = g.folded_threshold()
        ref, d_ref = conditional_conv2d_reference(x, g.weight, None, tau, inv_sigma, stride=stride,
                                                  padding=pad, partitions=p, grouped=grouped,
                                                  granularity=granularity, return_gate=True)
        torch.testing.assert_close(g(x), ref, atol=1e-5, rtol=0)
        # the folded compare agrees with the unfolded BN0(Yp) > delta except at float ties
        yp = F.conv2d(x, g.weight * g.mask, None, stride, pad)
        score = g._score(yp)
        decided = score.abs() > 1e-4
        assert torch.equal(d_ref[decided], (score > 0)[decided])
        assert decided.float().mean() > 0.95


def test_eval_threshold_memo_follows_every_change():
    """The eval-mode (tau, inv_sigma) memo is never stale: in-place edits, a replaced buffer, a
    loaded state dict and a dtype change all give folded_threshold's exact value; with grad on
    the memo is bypassed, so tau keeps the threshold's graph (the call then runs the
    differentiable reference)."""
    _, g = _layer(8, 8)

    def check():
        with torch.no_grad():
            got = g._eval_threshold()
            want = g.folded_threshold()
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and torch.equal(a, b)

    check()
    with torch.no_grad():
        g.threshold.add_(0.3)
    check()
    with torch.no_grad():
        g.bn0.running_var.mul_(2.0)
    check()
    g.bn0.running_mean = torch.randn(8)
    check()
    g.load_state_dict({k: v + 0.25 if k.endswith(("threshold", "running_mean")) else v
                       for k, v in g.state_dict().items()})
    check()
    g.double()
    check()
    tau, _ = g._eval_threshold()
    assert tau.requires_grad


def test_eval_module_rebinds_when_anything_it_bound_changes():
    """Under no_grad an eval GatedConv2d runs the kernel call bound for its input signature
    (kernels.bind); after any change (weights in place, threshold, input shape, layout, a new
    autotune choice, a copy) its output is still bitwise the unbound call's, which is checked
    against the reference elsewhere."""
    import copy
    import io
    from kernels import autotune, conditional_conv2d
    from kernels.api import validate
    from kernels.cpu import _runnable, _tiles
    conv = torch.nn.Conv2d(16, 32, 3, padding=1, bias=True)
    g = GatedConv2d.from_conv(conv, name="t", partitions=4).eval()
    with torch.no_grad():
        g.bn0.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 16, 9, 9).contiguous(memory_format=torch.channels_last)

    def unbound(x):
        tau, isg = g.folded_threshold()
        return conditional_conv2d(x, g.weight, g.bias, tau, isg, padding=1, partitions=4, backend="cpu")

    def check(x):
        with torch.no_grad():
            assert torch.equal(g(x), unbound(x))
        return g._binding[4]

    with torch.no_grad():   # auto's choice for this layer: the fused kernel (a bindable path)
        tau, isg = g.folded_threshold()
        geo = validate(x, g.weight, g.bias, tau, isg, 1, 1, 1, 4, True, 1)
        if "fused" not in _runnable(geo, 4, True, 1):
            pytest.skip("the fused kernel cannot run here (no C compiler)")
        autotune.tune(autotune.key(geo, 4, True, 1, _tiles(geo, None, (1, 1))[0], torch.get_num_threads()),
                      {"fused": lambda: None})
    first = check(x)
    assert first is not None and first.path == "fused" and g.last_path == "fused"
    assert check(x) is first                                   # kept while nothing changed
    with torch.no_grad():
        g.weight.mul_(1.5)
    assert check(x) is not first
    with torch.no_grad():
        g.threshold.add_(0.2)
    check(x)
    check(torch.randn(3, 16, 9, 9).contiguous(memory_format=torch.channels_last))
    assert check(x.contiguous()) is None                       # NCHW input: the unbound call
    autotune.forget()
    check(x)
    twin = copy.deepcopy(g)
    assert twin._binding is None
    with torch.no_grad():
        assert torch.equal(twin(x), g(x))
    torch.save(g, io.BytesIO())                                # no raw pointers pickled


def test_training_forward_matches_reference_with_batch_statistics():
    _, g = _layer(8, 8)
    g.train()
    x = torch.randn(4, 8, 6, 6)
    out = g(x)
    yp = F.conv2d(x, g.weight * g.mask, None, 1, 1)
    mean, var = yp.mean((0, 2, 3)), yp.var((0, 2, 3), unbiased=False)
    sigma = torch.sqrt(var + g.bn0.eps)
    ref = conditional_conv2d_reference(x, g.weight.detach(), None, mean + g.threshold.detach() * sigma,
                                       1 / sigma, stride=1, padding=1, partitions=4, grouped=True)
    torch.testing.assert_close(out.detach(), ref, atol=1e-5, rtol=0)


def test_straight_through_gradient_shape():
    _, g = _layer(8, 8)
    g.train()
    x = torch.randn(4, 8, 6, 6)
    out = g(x)
    (out * torch.randn_like(out)).sum().backward()
    assert g.threshold.grad is not None and g.threshold.grad.abs().sum() > 0
    assert g.weight.grad.abs().sum() > 0
    # with every gate off and sparse bp, no gradient reaches the thresholds
    g.zero_grad()
    with torch.no_grad():
        g.threshold.fill_(50.0)
    out = g(x)
    out.sum().backward()
    assert g.threshold.grad.abs().sum() == 0


def test_gate_loss_is_cgnet_threshold_loss():
    model = dyngate.convert(__import__("models").build("resnet20", in_channels=1))
    with torch.no_grad():
        for _, m in dyngate.gating.gated_layers(model):
            m.threshold.fill_(0.5)
    n = sum(m.out_channels for _, m in dyngate.gating.gated_layers(model))
    assert dyngate.gate_loss(model, 2.0).item() == pytest.approx(n * 1.5 ** 2)
    dyngate.gate_loss(model, 2.0).backward()
    assert all((m.threshold.grad < 0).all() for _, m in dyngate.gating.gated_layers(model))


def test_granularity_shares_one_decision_per_group():
    _, g = _layer(8, 16, granularity=4)
    dyngate.set_backend(g, "reference")
    with torch.no_grad():
        tau, s = g.folded_threshold()
        _, d = conditional_conv2d_reference(torch.randn(2, 8, 5, 5), g.weight, None, tau, s,
                                            padding=1, granularity=4, return_gate=True)
    d = d.view(2, 4, 4, 5, 5)
    assert (d == d[:, :, :1]).all()


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="not divisible by partitions"):
        GatedConv2d(6, 8, 3, partitions=4)
    with pytest.raises(dyngate.ConfigError, match="granularity"):
        GatedConv2d(8, 8, 3, granularity=3)
    with pytest.raises(dyngate.ConfigError, match="depthwise"):
        GatedConv2d.from_conv(torch.nn.Conv2d(8, 8, 3, groups=8), name="dw")
    _, g = _layer(8, 8)
    with pytest.raises(dyngate.ConfigError, match=r"t: expected input \(N, 8, H, W\)"):
        g(torch.randn(1, 4, 5, 5))
    with pytest.raises(dyngate.ConfigError, match="unknown backend"):
        dyngate.set_backend(g, "cuda-magic")


@pytest.mark.parametrize("backend", ["cpu", "auto"])
def test_model_backends_match_reference(backend):
    """A converted ResNet-20 in eval mode on the CPU fast path equals the reference backend
    (fp32, 1e-4 absolute after 20 layers)."""
    import models
    g = dyngate.convert(models.build("resnet20", in_channels=1)).train()
    g(torch.randn(16, 1, 28, 28))  # non-trivial decision-BN statistics
    g.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = dyngate.set_backend(g, "reference")(x)
        out = dyngate.set_backend(g, backend)(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="triton"):
        dyngate.set_backend(g, "triton")(x)  # CPU tensors without the interpreter


# --- block gates (tile x granularity) ---------------------------------------------------------
def _block_layer(tile, granularity=4, cin=8, cout=16, dtype=torch.float32, sparse_bp=True):
    conv = torch.nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
    g = GatedConv2d.from_conv(conv, name="t", partitions=4, grouped=True, granularity=granularity,
                              tile=tile, sparse_bp=sparse_bp).to(dtype)
    with torch.no_grad():
        g.threshold.uniform_(-0.3, 0.3)
    return g


def test_tile_1x1_gate_is_todays_cgnet_gate():
    """tile=(1, 1) keeps the per-element gate bit for bit: forward, gate and gradients."""
    torch.manual_seed(0)
    a = _block_layer((1, 1), granularity=1)
    b = GatedConv2d.from_conv(torch.nn.Conv2d(8, 16, 3, 1, 1, bias=False), name="t", partitions=4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    xa = x.detach().clone().requires_grad_()
    ya, yb = a.train()(xa), b.train()(x)
    assert torch.equal(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.equal(xa.grad, x.grad) and torch.equal(a.threshold.grad, b.threshold.grad)


@pytest.mark.parametrize("tile,granularity", [((2, 3), 4), ((4, 4), 1), ((7, 7), 16)])
def test_block_gate_training_decision_is_the_block_mean(tile, granularity):
    """One decision per tile x G block: the mean over the block of BN0(Yp) - delta > 0, the
    same decision in training (batch statistics) and eval (folded, any backend)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "kernels"))
    from kern_helpers import block_score_loop   # tests/kernels helper (explicit loop)
    torch.manual_seed(1)
    g = _block_layer(tile, granularity).train()
    x = torch.randn(3, 8, 7, 7)
    out = g(x)
    yp = g._base_conv(x)
    bn = F.batch_norm(yp, None, None, training=True, eps=g.bn0.eps)
    score = block_score_loop(bn - g.threshold.detach().view(1, -1, 1, 1), granularity, tile)
    rest = F.conv2d(x, g.weight * (1 - g.mask), None, 1, 1)
    torch.testing.assert_close(out, yp + (score > 0) * rest, rtol=0, atol=1e-5)
    g.eval()
    for backend in ("reference", "cpu"):
        dyngate.set_backend(g, backend)
        with torch.no_grad():
            y = g(x)
        tau, isg = g.folded_threshold()
        want = conditional_conv2d_reference(x, g.weight, None, tau, isg, padding=1, partitions=4,
                                            granularity=granularity, tile=tile)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


def test_block_score_and_broadcast_pass_gradcheck():
    """The differentiable pieces of a block gate, in float64: block mean and broadcast."""
    from kernels.reference import block_scores, expand_blocks
    s = torch.randn(2, 8, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: block_scores(t, 4, (3, 2)), (s,))
    d = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: expand_blocks(t, 4, (3, 2), 7, 5), (d,))


@pytest.mark.parametrize("sparse_bp", [True, False])
def test_block_gate_straight_through_gradient_reaches_the_whole_block(sparse_bp):
    """d(out)/d(score of element e) = alpha * s'(alpha * mean_B) * [d_B if sparse bp]
    * sum over the block's elements of grad_out * rest / |B| (edge blocks: their own size)."""
    from kernels.reference import block_scores, expand_blocks
    torch.manual_seed(2)
    g = _block_layer((3, 4), 4, dtype=torch.float64, sparse_bp=sparse_bp).train()
    score = torch.randn(2, 16, 7, 9, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 16, 7, 9, dtype=torch.float64)
    (g._gate(score) * up).sum().backward()
    b = block_scores(score.detach(), 4, (3, 4))
    sig = torch.sigmoid(g.alpha * b)
    local = g.alpha * sig * (1 - sig) * ((b > 0).double() if sparse_bp else 1.0)
    count = block_scores(torch.ones_like(up), 4, (3, 4)) * 0 + \
        torch.nn.functional.avg_pool2d(torch.ones(1, 1, 7, 9, dtype=torch.float64), (3, 4), (3, 4),
                                       ceil_mode=True, divisor_override=1)
    per_block = block_scores(up, 4, (3, 4)) * 4 * count          # sum of upstream over the block
    want = expand_blocks(local * per_block / (4 * count), 4, (3, 4), 7, 9)
    torch.testing.assert_close(score.grad, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("resnet20", 28), ("resnet56", 28),
                                       ("vgg16", 32), ("resnet20_postact", 28)])
def test_rule_all_gates_every_conv_but_the_stem_and_open_gates_are_dense(name, size):
    import models
    m = models.build(name, in_channels=1, num_classes=10).eval()
    g = dyngate.convert(m, rule="all", tile=(4, 4), granularity=4).eval()
    convs = [n for n, c in m.named_modules() if isinstance(c, torch.nn.Conv2d) and c.groups == 1]
    assert sorted(g.dyngate_spec["layers"]) == sorted(convs[1:]) and convs[0] in g.dyngate_spec["skipped"]
    x = torch.randn(2, 1, size, size)
    with dyngate.gates_open(g), torch.no_grad():
        torch.testing.assert_close(g(x), m(x), rtol=0, atol=1e-5)
    if name == "resnet20_postact":   # CGNet's net: its own rule already gates both block convs
        assert sorted(dyngate.convert(m).dyngate_spec["layers"]) == sorted(convs[1:])


def test_block_gates_save_load_and_profile(tmp_path):
    import models
    torch.manual_seed(3)
    g = dyngate.convert(models.build("resnet20", in_channels=1, num_classes=10), rule="all",
                        tile=(7, 7), granularity=16, grouped=False)
    g.train()
    with torch.no_grad():
        g(torch.randn(8, 1, 28, 28))
    g.eval()
    dyngate.save(g, tmp_path / "g.pt")
    h = dyngate.load(tmp_path / "g.pt")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(h(x), g(x), rtol=1e-5, atol=1e-5)
    p = dyngate.profile(h, x)
    for l in p.layers:
        if l.gated:
            m = h.get_submodule(l.name)
            assert l.tile == [7, 7] and m.tile == (7, 7)
            ho, wo = l.output_hw
            blocks = 4 * (l.out_channels // 16) * -(-ho // 7) * -(-wo // 7)
            assert l.block_density * blocks == pytest.approx(round(l.block_density * blocks))
