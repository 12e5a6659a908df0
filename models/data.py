"""Dataset loaders: Fashion-MNIST (IDX files from Debian's ``dataset-fashion-mnist``),
CIFAR-10 (python-pickle batches from a folder the user names) and a synthetic set.

Nothing is downloaded. Images are returned as normalised float tensors held in memory
(both sets are small), which keeps loading off the training hot path on a 2-core box.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DATASETS = ("fashion-mnist", "cifar10", "synthetic")


class DataArgError(ValueError):
    """A bad split, dataset name or batch format given to a loader."""


class DataError(RuntimeError):
    """A data folder or file is missing or corrupt."""


# The only globals a CIFAR-10 batch needs: numpy's array rebuild path (numpy 1 and 2 module names)
# and _codecs.encode, which Python 3 protocol-2 pickles use to rebuild bytes (it only encodes a str).
_CIFAR_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for user-supplied CIFAR batches: numpy arrays, lists, dicts, bytes and str only.

    Any other global (``os.system``, ``builtins.eval``...) is refused before it is looked up,
    so a poisoned data folder cannot run code.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refusing global {module}.{name} (not a numpy array)")
        return super().find_class(module, name)


def _open_maybe_gz(path: Path):
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            return gzip.open(candidate, "rb") if candidate.suffix == ".gz" else open(candidate, "rb")
    raise DataError(
        f"Fashion-MNIST file {path}(.gz) not found. Install it with "
        "'apt-get install dataset-fashion-mnist' or pass --data-dir to a folder holding the IDX files.")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped); checks magic, dtype and size."""
    with _open_maybe_gz(path) as f:
        raw = f.read()
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({ndim} dimensions announced)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {data.size}")
    return data.reshape(dims)


def fashion_mnist(split: str, data_dir: str | os.PathLike | None = None,
                  limit: int | None = None) -> TensorDataset:
    """Fashion-MNIST as (N, 1, 28, 28) normalised floats and int64 labels."""
    if split not in FASHION_MNIST_FILES:
        raise DataArgError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    if not root.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {root} does not exist. Install it with "
            "'apt-get install dataset-fashion-mnist' or pass --data-dir to a folder holding the IDX files.")
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    images = read_idx(root / img_name)
    labels = read_idx(root / lbl_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def cifar10(split: str, data_dir: str | os.PathLike, limit: int | None = None) -> TensorDataset:
    """CIFAR-10 from the python-pickle batches (``cifar-10-batches-py``) in ``data_dir``."""
    if data_dir is None:
        raise DataError("CIFAR-10 needs --data-dir pointing at the extracted cifar-10-batches-py folder")
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = root / name
        if not path.exists():
            raise DataError(f"CIFAR-10 batch {path} not found (expected the python-pickle format)")
        try:
            with open(path, "rb") as f:
                batch = _CifarUnpickler(f, encoding="bytes").load()
            if not isinstance(batch, dict):
                raise DataArgError(f"expected a dict, found {type(batch).__name__}")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as e:
            raise DataError(f"CIFAR-10 batch {path} is corrupt: {e}") from e
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    x = (x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    y = torch.from_numpy(np.concatenate(ys))
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return TensorDataset(x, y)


def synthetic(n: int = 512, in_channels: int = 1, size: int = 28, num_classes: int = 10,
              seed: int = 0) -> TensorDataset:
    """A learnable synthetic set: each class is a fixed random template plus noise."""
    templates = torch.randn(num_classes, in_channels, size, size,
                            generator=torch.Generator().manual_seed(12345))  # shared by all splits
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = templates[y] + 0.8 * torch.randn(n, in_channels, size, size, generator=g)
    return TensorDataset(x, y)


def load_dataset(name: str, split: str, data_dir: str | None = None,
                 limit: int | None = None) -> TensorDataset:
    """Dispatch by dataset name; returns an in-memory TensorDataset."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        # a negative slice bound would silently drop images from the end instead
        raise DataError(f"{name} {split}: the image limit must be an integer >= 1, got {limit!r}")
    if name == "fashion-mnist":
        return fashion_mnist(split, data_dir, limit)
    if name == "cifar10":
        return cifar10(split, data_dir, limit)
    if name == "synthetic":
        return synthetic(n=limit or (1024 if split == "train" else 256), seed=0 if split == "train" else 1)
    raise DataArgError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def dataset_geometry(name: str) -> tuple[int, int, int]:
    """(in_channels, image size, classes) of a dataset."""
    return {"fashion-mnist": (1, 28, 10), "cifar10": (3, 32, 10), "synthetic": (1, 28, 10)}[name]
