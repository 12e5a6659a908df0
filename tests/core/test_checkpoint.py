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


def test_resave_keeps_the_recorded_rule_and_threshold_init(tmp_path):
    """load re-converts with the saved layer list; a re-save must still record the rule that
    chose those layers and the thresholds' starting value (it once wrote the defaults)."""
    g = dyngate.convert(models.build("resnet20", in_channels=1, num_classes=10), partitions=2,
                        rule="all", threshold_init=0.3, grouped=False)
    dyngate.save(g, tmp_path / "a.pt")
    dyngate.save(dyngate.load(tmp_path / "a.pt"), tmp_path / "b.pt")
    spec = dyngate.checkpoint.read(tmp_path / "b.pt")["conversion"]
    assert (spec["rule"], spec["threshold_init"]) == ("all", 0.3)
    assert spec["layers"] == g.dyngate_spec["layers"]
    assert spec["skipped"] == g.dyngate_spec["skipped"] and "conv1" in spec["skipped"]


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
    with pytest.raises(CheckpointError, match="expected an nn.Module"):
        dyngate.save({"w": 1}, tmp_path / "y.pt")


class MyNet(torch.nn.Module):
    """A user's CNN, not in the registry: a residual add and a concat."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn0 = torch.nn.BatchNorm2d(width)
        self.a = torch.nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bna = torch.nn.BatchNorm2d(width)
        self.b = torch.nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bnb = torch.nn.BatchNorm2d(width)
        self.c = torch.nn.Conv2d(2 * width, 32, 3, padding=1, bias=False)
        self.bnc = torch.nn.BatchNorm2d(32)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bna(self.a(x)))
        y = torch.relu(self.bnb(self.b(y)) + x)
        y = torch.relu(self.bnc(self.c(torch.cat([x, y], 1))))
        return self.fc(y.mean((2, 3)))


class OtherNet(MyNet):
    pass


def _trained_gates(g: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    g.train()
    g(x)  # move BN running stats off their init, so a wrong load would show
    with torch.no_grad():
        for _, m in dyngate.gating.gated_layers(g):
            m.threshold.uniform_(-0.5, 0.5)
    return dyngate.set_backend(g.eval(), "reference")


@pytest.mark.parametrize("steps", ["gated", "pruned", "pruned+gated"])
def test_user_model_round_trip(tmp_path, steps):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 12, 12)
    m = MyNet()
    if "pruned" in steps:
        m = dyngate.prune(m, "l1", 0.25, example_input=x, round_to=4)
    if "gated" in steps:
        m = _trained_gates(dyngate.convert(m, partitions=2), x)
    m.eval()
    path = tmp_path / "mine.pt"
    dyngate.save(m, path)
    with pytest.raises(CheckpointError, match=r"test_checkpoint.MyNet.*not in the model registry.*model=MyNet"):
        dyngate.load(path)
    h = dyngate.set_backend(dyngate.load(path, model=MyNet()), "reference") if "gated" in steps \
        else dyngate.load(path, model=MyNet())
    with torch.no_grad():
        assert torch.equal(h(x), m(x))   # same weights, same ops: bit-identical


def test_user_model_wrong_class_or_already_converted_is_an_error(tmp_path):
    path = tmp_path / "mine.pt"
    dyngate.save(dyngate.convert(MyNet(), partitions=2), path)
    with pytest.raises(CheckpointError, match="saved from a .*MyNet, but model= is a .*OtherNet"):
        dyngate.load(path, model=OtherNet())
    with pytest.raises(CheckpointError, match="fresh dense model"):
        dyngate.load(path, model=dyngate.convert(MyNet(), partitions=2))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        dyngate.load(path, model=MyNet(width=8))


def test_registered_user_builder_loads_without_argument(tmp_path, monkeypatch):
    monkeypatch.setitem(models.REGISTRY, "mynet", MyNet)
    g = _trained_gates(dyngate.convert(models.build("mynet", width=8), partitions=2), torch.randn(2, 3, 8, 8))
    dyngate.save(g, tmp_path / "r.pt")
    h = dyngate.set_backend(dyngate.load(tmp_path / "r.pt"), "reference")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(h(x), g(x))
    with pytest.raises(ValueError, match="already registered"):
        models.register("mynet", OtherNet)


def test_recorded_recipe_of_absurd_size_is_refused_before_allocating(tmp_path):
    path = tmp_path / "d.pt"
    m = models.build("resnet20", in_channels=1, num_classes=10)
    dyngate.save(m, path)
    payload = torch.load(path, weights_only=True)
    payload["arch"]["kwargs"]["num_classes"] = 10_000_000_000
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="parameters .*refusing to build"):
        dyngate.load(path)
    payload["arch"] = "resnet20"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="field 'arch' must be a mapping"):
        dyngate.load(path)
