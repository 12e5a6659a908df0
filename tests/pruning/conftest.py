import pytest
import torch
import torch.nn as nn

import models


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The pruning tests are many small ops: one thread avoids contention on a shared box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def resnet():
    """A ResNet-20 for 1x28x28 inputs with spread-out BN scales (so criteria disagree)."""
    torch.manual_seed(0)
    m = models.build("resnet20", in_channels=1).eval()
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.uniform_(0.2, 1.5)
    return m
