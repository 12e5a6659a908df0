"""User data folders are read without executing code and fail with a DataError naming the file."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from models.data import DataError, cifar10, read_idx


class _Exploit:
    """Pickles to a call of os.system; unpickling it with plain pickle would run the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_batches(folder, payload_for, protocol=2):
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(payload_for(name), f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_with_numpy_arrays_load(tmp_path, protocol):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(4, 3 * 32 * 32), dtype=np.uint8)
    _write_batches(tmp_path, lambda n: {b"data": data, b"labels": [0, 1, 2, 3], b"batch_label": b"x"},
                   protocol)
    ds = cifar10("test", tmp_path)
    assert len(ds) == 4
    assert ds.tensors[1].tolist() == [0, 1, 2, 3]
    # first pixel round-trips through the normalisation exactly up to float32 rounding
    expected = (data[0, 0] / 255.0 - 0.4914) / 0.2470
    assert abs(float(ds.tensors[0][0, 0, 0, 0]) - expected) < 1e-5


def test_poisoned_cifar_batch_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    _write_batches(tmp_path, lambda n: {b"data": _Exploit(marker), b"labels": []})
    with pytest.raises(DataError, match="test_batch.*refusing global"):
        cifar10("test", tmp_path)
    assert not marker.exists()


def test_cifar_batch_that_is_not_a_dict_is_corrupt(tmp_path):
    _write_batches(tmp_path, lambda n: [1, 2, 3])
    with pytest.raises(DataError, match="test_batch is corrupt"):
        cifar10("test", tmp_path)


def test_idx_with_truncated_dimension_header_names_the_file(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + (60000).to_bytes(4, "big"))  # 3 dims announced, 1 given
    with pytest.raises(DataError, match="images: truncated IDX header"):
        read_idx(path)
