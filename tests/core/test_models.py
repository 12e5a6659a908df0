import pytest
import torch

import models


@pytest.mark.parametrize("name,size", [("resnet18", 28), ("resnet34", 28), ("resnet20", 28),
                                       ("resnet56", 32), ("vgg16", 28), ("vgg16", 32)])
def test_models_take_fashion_mnist_shapes(name, size):
    m = models.build(name, in_channels=1, num_classes=10).eval()
    assert m(torch.randn(2, 1, size, size)).shape == (2, 10)
    assert m.dyngate_arch == {"name": name, "kwargs": {"in_channels": 1, "num_classes": 10}}


def test_resnet18_state_dict_names_follow_torchvision():
    keys = set(models.build("resnet18").state_dict())
    # A representative sample of torchvision's resnet18 keys (layout and names).
    for k in ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
              "layer2.0.downsample.0.weight", "layer2.0.downsample.1.num_batches_tracked",
              "layer4.1.conv2.weight", "fc.weight", "fc.bias"]:
        assert k in keys
    assert len(keys) == 122  # torchvision resnet18 has 122 state-dict entries


def test_parameter_counts_match_published_sizes():
    def count(m):
        return sum(p.numel() for p in m.parameters())
    assert count(models.build("resnet18")) == 11_689_512   # torchvision resnet18
    assert count(models.build("resnet34")) == 21_797_672   # torchvision resnet34
    assert abs(count(models.build("resnet20")) - 0.27e6) < 0.01e6  # He et al.: 0.27M
    assert abs(count(models.build("resnet56")) - 0.85e6) < 0.01e6  # He et al.: 0.85M


def test_unknown_model_is_a_clear_error():
    with pytest.raises(models.ArchError, match="unknown model 'resnet99'"):
        models.build("resnet99")
