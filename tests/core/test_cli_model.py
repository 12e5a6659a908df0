"""`python -m dyngate convert|prune` and the help of every subcommand."""
import argparse

import pytest
import torch

import dyngate
import models
from dyngate import cli


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_of_every_subcommand_has_help_and_its_default():
    subs = _subparsers()
    assert {"train", "eval", "profile", "convert", "prune"} <= set(subs)
    for name, p in subs.items():
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            where = f"{name} {'/'.join(a.option_strings) or a.dest}"
            assert a.help and a.help.strip(), f"{where} has no help"
            if a.option_strings and not a.required:
                assert "default" in a.help, f"{where}: help does not state its default"
            if a.choices:
                assert all(str(c) in a.help for c in a.choices), f"{where}: help omits allowed values"


@pytest.fixture()
def dense_ckpt(tmp_path):
    torch.manual_seed(0)
    m = models.build("resnet20", in_channels=1, num_classes=10).eval()
    path = tmp_path / "dense.pt"
    dyngate.save(m, path, extra={"trainer": {"config": {"dataset": "synthetic"}}})
    return path


def test_prune_then_convert_cli_gates_every_layer(dense_ckpt, tmp_path, capsys):
    pruned, gated = tmp_path / "p.pt", tmp_path / "pg.pt"
    assert cli.main(["prune", str(dense_ckpt), "--out", str(pruned), "--method", "fpgm",
                     "--ratio", "0.3", "--partitions", "4", "--batch-size", "8", "--max-batches", "1"]) == 0
    assert "fewer" in capsys.readouterr().out
    assert cli.main(["convert", str(pruned), "--out", str(gated), "--partitions", "4"]) == 0
    assert "gated 9 convs" in capsys.readouterr().out
    g = dyngate.load(gated)
    p = dyngate.load(pruned)
    assert g.dyngate_pruning == p.dyngate_pruning and len(g.dyngate_spec["layers"]) == 9
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(), dyngate.gates_open(dyngate.set_backend(g, "reference")):
        torch.testing.assert_close(g(x), p(x), rtol=1e-4, atol=1e-5)  # fp32 sum order of the split


@pytest.mark.parametrize("argv, msg", [
    (["convert", "{dense}", "--out", "/nonexistent/x.pt"], "--out /nonexistent/x.pt: folder"),
    (["convert", "{gated}", "--out", "{tmp}/y.pt"], "already gated"),
    (["prune", "{dense}", "--out", "{tmp}/y.pt", "--ratio", "1.5"], "ratio must be a number in [0, 1)"),
    (["prune", "{dense}", "--out", "{tmp}/y.pt", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["prune", "{dense}", "--out", "{tmp}/y.pt", "--partitions", "4", "--round-to", "4"],
     "not a multiple of 16"),
])
def test_cli_bad_input_is_one_line_exit_2(dense_ckpt, tmp_path, capsys, argv, msg):
    gated = tmp_path / "g.pt"
    dyngate.save(dyngate.convert(dyngate.load(dense_ckpt)), gated)
    argv = [a.format(dense=dense_ckpt, gated=gated, tmp=tmp_path) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err
