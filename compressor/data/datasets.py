"""Classification datasets as tensors: scikit-learn digits, MNIST-1D (generated locally), user .npz.

Nothing is fetched from the network: digits ships inside scikit-learn and MNIST-1D is produced by
the `mnist1d` package's generator (a few seconds for 10,000 samples, cached as .npz afterwards).
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compressor.data.shapes import shape_arrays
from compressor.data.validate import cached, check_split, features, labels, read_npz
from compressor.errors import CompressorError
from compressor.io import cache_dir


@dataclass
class Dataset:
    """Train/test split; x is float32 (N, *feature_shape), y is int64 (N,)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _split(name, x, y, test_fraction, seed) -> Dataset:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    as_x = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    as_y = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
    return Dataset(name, as_x(x[train]), as_y(y[train]), as_x(x[test]), as_y(y[test]))


def digits(test_fraction: float = 0.2, seed: int = 0, image: bool = False) -> Dataset:
    """scikit-learn's 1,797 8x8 digits in [0, 1]: (N, 64), or (N, 1, 8, 8) with image=True."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    if image:
        x = x.reshape(-1, 1, 8, 8)
    return _split("digits", x, bunch.target, test_fraction, seed)


KEYS = ("x", "y", "x_test", "y_test")


def _check_mnist1d(arrays: dict, path) -> None:
    where = f"cached dataset {path}"
    for split in ("", "_test"):
        x = features(arrays["x" + split], where, "x" + split)
        if arrays["y" + split].shape != (len(x),):
            raise CompressorError(f"{where}: y{split} has shape {arrays['y' + split].shape}, "
                                  f"expected ({len(x)},)")
    y = np.concatenate([arrays["y"], arrays["y_test"]])
    labels(y, len(y), where)


def mnist1d(num_samples: int = 10_000, seed: int = 42, channel: bool = False) -> Dataset:
    """MNIST-1D (Greydanus 2020) generated locally: (N, 40), or (N, 1, 40) with channel=True.

    The generator's own 80/20 split is kept so results compare with the paper's.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args(as_dict=True)
    args.update(num_samples=num_samples, seed=seed)
    args.pop("url")
    key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]

    def make():
        from mnist1d.data import ObjectView

        made = make_dataset(ObjectView(args))
        return {k: made[k] for k in KEYS}

    path = cache_dir() / f"mnist1d-{key}.npz"
    arrays = cached(path, KEYS, make, lambda a: _check_mnist1d(a, path))
    shape = (-1, 1, 40) if channel else (-1, 40)
    f32 = lambda a: torch.from_numpy(a.astype(np.float32).reshape(shape))  # noqa: E731
    i64 = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return Dataset("mnist1d", f32(arrays["x"]), i64(arrays["y"]), f32(arrays["x_test"]),
                   i64(arrays["y_test"]))


def shapes(num_samples: int = 8000, size: int = 16, seed: int = 0,
           test_fraction: float = 0.25) -> Dataset:
    """Generated 10-class shape images (compressor.data.shapes): (N, 3, size, size) in [0, 1];
    the first test_fraction of the generated samples is the test split."""
    if not 0 < test_fraction < 1:
        raise CompressorError(f"shapes: test_fraction must be in (0, 1), got {test_fraction}")
    x, y = shape_arrays(num_samples, size, seed, cache_dir())
    n_test = int(round(num_samples * test_fraction))
    images = torch.from_numpy(x.astype(np.float32) / 255.0)
    labels = torch.from_numpy(y)
    return Dataset("shapes", images[n_test:], labels[n_test:], images[:n_test], labels[:n_test])


def from_npz(path: str | os.PathLike, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A user's .npz with arrays X (N, ...) float and y (N,) integer labels, validated."""
    path = Path(path)
    arrays = read_npz(path, ("X", "y"))
    where = f"data file {path}"
    x = features(arrays["X"], where)
    y = labels(arrays["y"], len(x), where)
    check_split(len(x), int(round(len(x) * test_fraction)), where)
    return _split(path.stem, x, y, test_fraction, seed)


DATASETS = {"digits": digits, "mnist1d": mnist1d, "shapes": shapes}


def load_dataset(name: str, **kwargs) -> Dataset:
    """'digits', 'mnist1d', 'shapes', or a path to an .npz file; validated before any use."""
    if name in DATASETS:
        data = DATASETS[name](**kwargs)
        return check_dataset(data, f"dataset {name}")
    if name.endswith(".npz"):
        return from_npz(name, **kwargs)
    if name.endswith(".npy"):
        raise CompressorError(f"data file {name} is a single .npy array; save X and y together "
                              "with numpy.savez(path.npz, X=..., y=...)")
    raise CompressorError(f"unknown dataset {name!r}: use one of {sorted(DATASETS)} or a .npz path")


def check_dataset(data: Dataset, where: str) -> Dataset:
    """Finite features, labels 0..K-1 and non-empty splits (built-in sets are checked too: a
    generator or cache gone wrong must not train an all-NaN model)."""
    check_split(len(data.x_train) + len(data.x_test), len(data.x_test), where)
    features(data.x_train.numpy(), where, "x_train")
    features(data.x_test.numpy(), where, "x_test")
    y = torch.cat([data.y_train, data.y_test]).numpy()
    labels(y, len(y), where, "y")
    return data
