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
from compressor.errors import CompressorError
from compressor.io import atomic_write


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


def _cache_dir() -> Path:
    root = os.environ.get("COMPRESSOR_CACHE") or Path.home() / ".cache" / "compressor"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def mnist1d(num_samples: int = 10_000, seed: int = 42, channel: bool = False) -> Dataset:
    """MNIST-1D (Greydanus 2020) generated locally: (N, 40), or (N, 1, 40) with channel=True.

    The generator's own 80/20 split is kept so results compare with the paper's.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args(as_dict=True)
    args.update(num_samples=num_samples, seed=seed)
    args.pop("url")
    key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    cache = _cache_dir() / f"mnist1d-{key}.npz"
    if cache.exists():
        with np.load(cache) as f:
            arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    else:
        from mnist1d.data import ObjectView

        made = make_dataset(ObjectView(args))
        arrays = {k: made[k] for k in ("x", "y", "x_test", "y_test")}
        atomic_write(cache, lambda f: np.savez(f, **arrays))  # a kill leaves no half file
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
    x, y = shape_arrays(num_samples, size, seed, _cache_dir())
    n_test = int(round(num_samples * test_fraction))
    images = torch.from_numpy(x.astype(np.float32) / 255.0)
    labels = torch.from_numpy(y)
    return Dataset("shapes", images[n_test:], labels[n_test:], images[:n_test], labels[:n_test])


# More classes than this is almost surely a column of ids, not labels (it would build a huge
# output layer); a user who needs more can raise it.
MAX_CLASSES = 10_000


def from_npz(path: str | os.PathLike, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A user's .npz with arrays X (N, ...) float and y (N,) integer labels."""
    path = Path(path)
    if not path.exists():
        raise CompressorError(f"data file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"X", "y"} - set(f.files)
            if missing:
                raise CompressorError(f"data file {path} lacks array(s) {sorted(missing)}; "
                                      f"it has {sorted(f.files)} (expected X and y)")
            x, y = f["X"], f["y"]
    except CompressorError:
        raise
    except Exception as exc:  # truncated zip, a .npy renamed .npz, pickled objects, ...
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise CompressorError(f"data file {path} is not a readable .npz ({reason})") from None
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
        raise CompressorError(f"data file {path}: X must be numeric with shape (N, features...), "
                              f"got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise CompressorError(f"data file {path}: y must be integer labels of shape ({len(x)},), "
                              f"got {y.dtype} {y.shape}")
    if len(x) < 2:
        raise CompressorError(f"data file {path}: needs at least 2 samples, got {len(x)}")
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        bad = int(np.flatnonzero((y < 0) | (y >= MAX_CLASSES))[0])
        raise CompressorError(f"data file {path}: labels must be in 0..{MAX_CLASSES - 1} "
                              f"(class indices), got y[{bad}] = {y[bad]}")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        raise CompressorError(f"data file {path}: X holds NaN or inf (first in sample "
                              f"{int(np.flatnonzero(~finite)[0])}); clean the data first")
    n_test = int(round(len(x) * test_fraction))
    if n_test < 1 or n_test >= len(x):
        raise CompressorError(f"data file {path}: {len(x)} samples are too few for a train and "
                              f"a non-empty test split of {test_fraction:.0%}")
    return _split(path.stem, x, y, test_fraction, seed)


DATASETS = {"digits": digits, "mnist1d": mnist1d, "shapes": shapes}


def load_dataset(name: str, **kwargs) -> Dataset:
    """'digits', 'mnist1d', 'shapes', or a path to an .npz file."""
    if name in DATASETS:
        return DATASETS[name](**kwargs)
    if name.endswith(".npz"):
        return from_npz(name, **kwargs)
    raise CompressorError(f"unknown dataset {name!r}: use one of {sorted(DATASETS)} or a .npz path")
