"""Backend selection and argument validation of ``kernels.conditional_conv2d``."""
from __future__ import annotations

import pytest
import torch

from kern_helpers import check_against_reference, make_case
from kernels import KernelArgError, conditional_conv2d
from kernels.api import select_backend


@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
def test_cpu_tensor_backends_match_reference(backend):
    x, w, b, tau, isg = make_case(2, 8, 8, 7, 7, 3, density=0.3)
    out, gate = conditional_conv2d(x, w, b, tau, isg, stride=(1, 1), padding=(1, 1),
                                   backend=backend, return_gate=True)
    check_against_reference(out, gate, x, w, b, tau, isg, padding=1)
    plain = conditional_conv2d(x, w, b, tau, isg, padding=1, backend=backend)
    assert isinstance(plain, torch.Tensor)
    torch.testing.assert_close(plain, out)


def test_auto_resolves_by_device():
    assert select_backend("auto", torch.device("cpu")) == "cpu"
    assert select_backend("auto", torch.device("cuda", 0)) == "triton"


def test_cpu_backend_on_cuda_is_an_error():
    with pytest.raises(KernelArgError, match="backend 'cpu'.*cuda"):
        select_backend("cpu", torch.device("cuda", 0))


def test_triton_backend_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w, b, tau, isg = make_case(1, 4, 4, 5, 5, 3)
    with pytest.raises(KernelArgError, match="backend 'triton'.*cpu"):
        conditional_conv2d(x, w, b, tau, isg, backend="triton")


def test_unknown_backend():
    x, w, b, tau, isg = make_case(1, 4, 4, 5, 5, 3)
    with pytest.raises(KernelArgError, match="unknown backend 'tvm'"):
        conditional_conv2d(x, w, b, tau, isg, backend="tvm")


def _bad(**override):
    x, w, b, tau, isg = make_case(1, 8, 8, 5, 5, 3)
    args = dict(x=x, weight=w, bias=b, tau=tau, inv_sigma=isg)
    kw = {k: v for k, v in override.items() if k not in args}
    args.update({k: v for k, v in override.items() if k in args})
    return lambda: conditional_conv2d(args["x"], args["weight"], args["bias"], args["tau"],
                                      args["inv_sigma"], backend="cpu", **kw)


@pytest.mark.parametrize("override,message", [
    (dict(weight=torch.randn(8, 6, 3, 3)), "weight has 6 input channels but x has 8"),
    (dict(tau=torch.zeros(7)), r"tau must have shape \(8,\)"),
    (dict(inv_sigma=torch.ones(8, 1)), r"inv_sigma must have shape \(8,\)"),
    (dict(bias=torch.zeros(3)), r"bias must have shape \(8,\)"),
    (dict(partitions=3), "partitions=3 does not divide the input channels"),
    (dict(partitions=0), "partitions must be a positive int"),
    (dict(granularity=3), "granularity=3"),
    (dict(groups=2), "groups=2"),
    (dict(x=torch.randn(8, 5, 5)), "x must be 4-D"),
    (dict(stride=0), "stride/dilation must be >= 1"),
    (dict(padding=(1, 2, 3)), "padding must be an int or a pair"),
    (dict(x=torch.randn(1, 8, 2, 2)), "too small for kernel"),
])
def test_bad_arguments_name_the_argument(override, message):
    with pytest.raises(KernelArgError, match=message):
        _bad(**override)()


def test_partitions_must_divide_output_channels():
    x = torch.randn(1, 8, 5, 5)
    w = torch.randn(6, 8, 3, 3)
    with pytest.raises(KernelArgError, match="does not divide the output channels"):
        conditional_conv2d(x, w, None, torch.zeros(6), torch.ones(6), partitions=4, backend="cpu")


def test_bias_none_is_supported():
    x, w, _, tau, isg = make_case(2, 8, 8, 6, 6, 3, density=0.5)
    out, gate = conditional_conv2d(x, w, None, tau, isg, padding=1, backend="cpu", return_gate=True)
    check_against_reference(out, gate, x, w, None, tau, isg, padding=1)


def test_without_triton_cpu_install_works_and_cuda_auto_falls_back(tmp_path):
    """triton is an optional extra: with its import blocked, dyngate imports, gates and runs on
    CPU; auto on CUDA resolves to the reference (with a warning), an explicit 'triton' is a
    clear error naming the extra."""
    import subprocess
    import sys
    from pathlib import Path
    block = tmp_path / "sitecustomize.py"
    block.write_text("import sys\nclass _NoTriton:\n    def find_spec(self, name, path=None, target=None):\n"
                     "        if name == 'triton' or name.startswith('triton.'):\n"
                     "            raise ModuleNotFoundError(\"No module named 'triton'\")\n"
                     "sys.meta_path.insert(0, _NoTriton())\n")
    code = ("import warnings, torch, dyngate, models\n"
            "from kernels import api\n"
            "assert not api.triton_available()\n"
            "g = dyngate.convert(models.build('resnet20', in_channels=1)).eval()\n"
            "with torch.no_grad(): y = g(torch.randn(2, 1, 28, 28))\n"
            "assert y.shape == (2, 10)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    assert api.select_backend('auto', torch.device('cuda')) == 'reference'\n"
            "assert any('.[gpu]' in str(x.message) for x in w)\n"
            "try:\n    api.select_backend('triton', torch.device('cuda'))\n"
            "except ValueError as e:\n    assert '.[gpu]' in str(e), e\n"
            "else:\n    raise AssertionError('triton backend accepted without triton')\n"
            "import sys; assert 'triton' not in sys.modules\n")
    import os
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[2])]))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_kernel_arg_error_is_a_value_error_and_triton_conv_does_not_import_api():
    """Callers that caught ValueError keep working; the dispatcher and the Triton kernels share
    kernels.triton_env instead of importing each other."""
    import ast
    from pathlib import Path
    assert issubclass(KernelArgError, ValueError)
    src = Path(__file__).resolve().parents[2] / "kernels" / "triton_conv.py"
    imported = {n.module for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, ast.ImportFrom)}
    assert "kernels.api" not in imported and "kernels.triton_env" in imported
