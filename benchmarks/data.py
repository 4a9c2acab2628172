"""Fashion-MNIST from its IDX files, read with numpy (no torchvision).

The files come from Debian's package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist/,
gzip IDX); `--data-dir` points elsewhere. Sizes and counts are checked, and a missing or short file
raises DataMissingError with the command that installs the package.
"""
import gzip
import os
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = ("install Debian's package with `apt-get update && apt-get install -y "
                "dataset-fashion-mnist` (or `make data`), or pass --data-dir to a folder holding "
                "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
                "and t10k-labels-idx1-ubyte.gz")
# Counts of the published data set; a folder of other (e.g. generated) files passes counts=None.
FASHION_MNIST_COUNTS = {"train": 60000, "t10k": 10000}
IMAGE_SHAPE = (28, 28)
# IDX type codes (the third magic byte) and the numpy dtype each stands for, big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataMissingError(RuntimeError):
    """The data set's files are missing or malformed; the message says how to install them."""


def read_idx(path: str) -> np.ndarray:
    """One IDX file (gzip if the name ends in .gz) as a numpy array of its declared shape."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataMissingError(f"cannot read {path}: {e}; {INSTALL_HINT}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataMissingError(f"{path} is not an IDX file (magic {data[:4].hex()}); {INSTALL_HINT}")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataMissingError(
            f"{path}: header says shape {shape} ({expected} bytes of data) but the file holds "
            f"{len(data) - header} bytes; {INSTALL_HINT}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes an IDX file (gzip if the name ends in .gz): the tests' generated data sets."""
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = next(k for k, v in _IDX_DTYPES.items() if np.dtype(v) == dtype)
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=dtype).tobytes())


def _find(data_dir: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise DataMissingError(f"Fashion-MNIST file {stem}(.gz) not found in {data_dir}; {INSTALL_HINT}")


def read_split(data_dir: str, split: str, count: Optional[int] = None):
    """(images uint8 (N, 28, 28), labels int64 (N,)) of split 'train' or 't10k'."""
    images = read_idx(_find(data_dir, f"{split}-images-idx3-ubyte"))
    labels = read_idx(_find(data_dir, f"{split}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataMissingError(f"{split} images have shape {images.shape}, expected (N, 28, 28); "
                               f"{INSTALL_HINT}")
    if labels.shape != (images.shape[0],):
        raise DataMissingError(f"{split}: {images.shape[0]} images but labels of shape "
                               f"{labels.shape}; {INSTALL_HINT}")
    if count is not None and images.shape[0] != count:
        raise DataMissingError(f"{split}: {images.shape[0]} images, expected {count}; "
                               f"{INSTALL_HINT}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataMissingError(f"{split}: labels outside 0..9; {INSTALL_HINT}")
    return images, labels.astype(np.int64)


@dataclass
class Dataset:
    """Normalised tensors, (N, 1, 28, 28) float32, and what the normalisation used."""
    train_x: "object"
    train_y: "object"
    test_x: "object"
    test_y: "object"
    mean: float  # of the whole training split, pixel values scaled to [0, 1]
    std: float
    data_dir: str


def load_fashion_mnist(data_dir: str = DEFAULT_DATA_DIR, train_subset: Optional[int] = None,
                       test_subset: Optional[int] = None, counts=FASHION_MNIST_COUNTS) -> Dataset:
    """The data set as torch tensors, normalised with the training split's own mean and std
    (computed here over every training image: about 0.2860 / 0.3530 for Fashion-MNIST).
    Subsets take the first images of each split (the files are already shuffled)."""
    import torch

    if not os.path.isdir(data_dir):
        raise DataMissingError(f"Fashion-MNIST folder {data_dir} does not exist; {INSTALL_HINT}")
    counts = counts or {}
    train_images, train_labels = read_split(data_dir, "train", counts.get("train"))
    test_images, test_labels = read_split(data_dir, "t10k", counts.get("t10k"))
    scaled = train_images.astype(np.float64) / 255.0
    mean, std = float(scaled.mean()), float(scaled.std())

    def to_tensor(images, labels, subset):
        images, labels = images[:subset], labels[:subset]
        x = (torch.from_numpy(images.astype(np.float32)) / 255.0 - mean) / std
        return x.unsqueeze(1).contiguous(), torch.from_numpy(labels)

    train_x, train_y = to_tensor(train_images, train_labels, train_subset)
    test_x, test_y = to_tensor(test_images, test_labels, test_subset)
    return Dataset(train_x, train_y, test_x, test_y, mean, std, data_dir)


def make_fake_dataset(data_dir: str, train: int = 64, test: int = 32, seed: int = 0) -> str:
    """Writes a small random Fashion-MNIST-shaped IDX set (for tests and dry runs)."""
    rng = np.random.default_rng(seed)
    os.makedirs(data_dir, exist_ok=True)
    for split, n in (("train", train), ("t10k", test)):
        write_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"),
                  rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        write_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"),
                  rng.integers(0, 10, size=(n,), dtype=np.uint8))
    return data_dir
