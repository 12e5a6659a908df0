"""Shared checks for the kernel tests: every backend against the float64 reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import cpu as kcpu, cpu_fused
from kernels.api import validate
from kernels.reference import base_mask

GEOMS = [  # (stride, padding, dilation, h, w, k) shared by the CPU-path tests
    (1, 1, 1, 7, 7, 3),
    (2, 1, 1, 9, 8, 3),
    (1, 2, 2, 8, 9, 3),
    (2, 0, 1, 7, 7, 3),
    (1, 0, 1, 5, 6, 1),
]


def make_case(n=2, c_in=8, c_out=8, h=7, w=7, k=3, *, seed=0, density=0.5, dtype=torch.float32,
              partitions=4, grouped=True, stride=1, padding=1, dilation=1):
    """Random inputs with tau at the (1-density) quantile of each channel's partial sum."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=gen)
    weight = torch.randn(c_out, c_in, k, k, generator=gen) / (c_in * k * k) ** 0.5
    bias = torch.randn(c_out, generator=gen) * 0.1
    inv_sigma = torch.rand(c_out, generator=gen) + 0.5
    m = base_mask(c_out, c_in, partitions, grouped)
    yp = F.conv2d(x, weight * m, bias, stride, padding, dilation)
    if density >= 1:
        tau = torch.full((c_out,), -1e9)
    elif density <= 0:
        tau = torch.full((c_out,), 1e9)
    else:
        tau = torch.quantile(yp.transpose(0, 1).reshape(c_out, -1), 1 - density, dim=1)
    cast = (lambda t: t.to(dtype))
    return cast(x), cast(weight), cast(bias), tau.to(dtype), inv_sigma.to(dtype)


def block_score_loop(score: torch.Tensor, granularity: int, tile) -> torch.Tensor:
    """Per-element copy of the mean score of its gate block, by an explicit loop over blocks
    (independent of ``kernels.reference.block_scores``); edge blocks average what they hold."""
    n, c, h, w = score.shape
    th, tw = tile
    out = torch.empty_like(score)
    for c0 in range(0, c, granularity):
        for y0 in range(0, h, th):
            for x0 in range(0, w, tw):
                blk = (slice(None), slice(c0, c0 + granularity), slice(y0, y0 + th), slice(x0, x0 + tw))
                out[blk] = score[blk].mean(dim=(1, 2, 3)).view(n, 1, 1, 1)
    return out


def check_against_reference(out, gate, x, weight, bias, tau, inv_sigma, *, stride=1, padding=0,
                            dilation=1, partitions=4, grouped=True, granularity=1, tile=(1, 1),
                            tol=1e-5, margin=1e-4):
    """Assert ``out``/``gate`` match the reference semantics, computed in float64.

    Gates must agree wherever the float64 score is farther than ``margin`` (relative to the
    score's scale) from zero; near-ties may go either way in low precision, so the
    output is checked against Yp + d*rest with the backend's own gate, within ``tol`` relative
    to the output scale.
    """
    d64 = [t.detach().double() if t is not None else None for t in (x, weight, bias, tau, inv_sigma)]
    x64, w64, b64, tau64, isg64 = d64
    m = base_mask(w64.shape[0], w64.shape[1], partitions, grouped, dtype=torch.float64)
    yp = F.conv2d(x64, w64 * m, b64, stride, padding, dilation)
    rest = F.conv2d(x64, w64 * (1 - m), None, stride, padding, dilation)
    c = yp.shape[1]
    score = (yp - tau64.view(1, c, 1, 1)) * isg64.view(1, c, 1, 1)
    if tuple(tile) != (1, 1):
        score = block_score_loop(score, granularity, tile)
    elif granularity > 1:
        n, _, h, w = score.shape
        score = score.view(n, c // granularity, granularity, h, w).mean(2, keepdim=True)
        score = score.expand(n, c // granularity, granularity, h, w).reshape(n, c, h, w)
    score_scale = float(yp.abs().max()) * float(isg64.abs().max()) + 1e-6
    clear = score.abs() > margin * score_scale
    ref_gate = score > 0
    assert gate.shape == ref_gate.shape and gate.dtype == torch.bool
    wrong = (gate.cpu() != ref_gate) & clear
    assert not wrong.any(), f"{int(wrong.sum())} gate decisions differ away from the threshold"
    expected = yp + gate.cpu().double() * rest
    assert out.shape == expected.shape
    assert out.dtype == x.dtype
    err = (out.detach().cpu().double() - expected).abs().max().item()
    assert err <= tol * max(float(expected.abs().max()), 1e-12), f"max error {err:.3g}"
    return ref_gate


def run_block_case(case, geom, strategy, *, grouped, granularity, tile, partitions=4):
    """Run one CPU path on a block-gated case (gate ``tile`` x ``granularity`` channels), check
    it against the float64 reference, and return its gate."""
    stride, padding, dilation, _, _, _ = geom
    x, w, b, tau, isg = case
    geo = validate(x, w, b, tau, isg, stride, padding, dilation, partitions, grouped, granularity, 1, tile)
    out, gate = kcpu.conditional_conv2d_cpu(x, w, b, tau, isg, geo, partitions=partitions,
                                            grouped=grouped, granularity=granularity,
                                            return_gate=True, strategy=strategy, gate_tile=tile)
    check_against_reference(out, gate, x, w, b, tau, isg, stride=stride, padding=padding,
                            dilation=dilation, partitions=partitions, grouped=grouped,
                            granularity=granularity, tile=tile)
    return gate


# The compiled-kernel tests run on the CPU's own target and on AVX2 (built with -mno-avx512f on
# an AVX-512 machine) and generic SSE2, so every code path is checked whatever CPU runs them.
ISA_TARGETS = ["native"] + (["avx2"] if cpu_fused.cpu_isa() == "avx512" else []) + ["generic"]


@pytest.fixture(params=ISA_TARGETS)
def isa_target(request, monkeypatch):
    """Every compiled kernel of the test is built for ISA target ``request.param``; a module
    opts in with ``pytestmark = pytest.mark.usefixtures("isa_target")``."""
    monkeypatch.setenv("DYNGATE_ISA", request.param)
    return request.param
