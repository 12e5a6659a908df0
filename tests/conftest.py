import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _private_tune_cache(tmp_path, monkeypatch):
    """Each test tunes into its own cache file: no test sees another's (or the user's) choices."""
    from kernels import autotune
    monkeypatch.setattr(autotune, "cache_file", lambda: tmp_path / "tune-test.json")
    autotune.forget()
    yield
    autotune.forget()
