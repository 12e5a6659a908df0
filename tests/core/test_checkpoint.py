import pytest
import torch

import dyngate
import models
from dyngate import CheckpointError


def test_round_trip_gated_model_identical_outputs(tmp_path):
    g = dyngate.convert(models.build("resnet20", in_channels=1, num_classes=10), partitions=2,
                        granularity=2)
    g.train()
    g(torch.randn(8, 1, 28, 28))  # move the decision-BN running stats off their init
    with torch.no_grad():
        for _, m in dyngate.gating.gated_layers(g):
            m.threshold.uniform_(-0.5, 0.5)
    g.eval()
    dyngate.set_backend(g, "reference")
    path = tmp_path / "g.pt"
    dyngate.save(g, path, extra={"accuracy": 0.5})
    h = dyngate.set_backend(dyngate.load(path), "reference")
    assert h.dyngate_spec["layers"] == g.dyngate_spec["layers"]
    assert h.get_submodule("layer1.0.conv1").partitions == 2
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(h(x), g(x))


def test_load_onto_mismatched_architecture_is_an_error(tmp_path):
    path = tmp_path / "d.pt"
    dyngate.save(models.build("resnet20", in_channels=1, num_classes=10), path)
    with pytest.raises(CheckpointError, match="does not match the architecture: .*shape mismatch conv1.weight"):
        dyngate.load(path, model=models.build("resnet20", in_channels=3, num_classes=10))
    with pytest.raises(CheckpointError, match="missing"):
        dyngate.load(path, model=models.build("resnet56", in_channels=1, num_classes=10))


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        dyngate.load(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a dyngate checkpoint"):
        dyngate.load(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="dyngate_arch"):
        dyngate.save(torch.nn.Linear(2, 2), tmp_path / "y.pt")
