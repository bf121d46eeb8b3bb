"""One validation of every dataset before any work, whichever way it arrives (the user's .npz,
a built-in set, a cached generated set): readable arrays, finite float32 features, class-index
labels with a bounded number of classes, a non-empty train and test split. Every problem is a
one-line CompressorError naming the file (or the dataset) and, for values, the first bad index.
"""

import io
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compressor.errors import CompressorError
from compressor.io import check_writable, write_bytes_atomic

# More classes than this is almost surely a column of ids, not labels (it would build a huge
# output layer); a user who needs more can raise it.
MAX_CLASSES = 10_000

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def read_npz(path: str | os.PathLike, keys: tuple[str, ...], what: str = "data file"
             ) -> dict[str, np.ndarray]:
    """{key: array} of an .npz file, or a one-line error saying what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        raise CompressorError(f"{what} {path} is a directory, not an .npz file")
    if not path.is_file():
        raise CompressorError(f"{what} {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        raise CompressorError(f"{what} {path} is empty")
    if head == _NPY_MAGIC:
        raise CompressorError(f"{what} {path} is a single .npy array, not an .npz archive; "
                              "save both arrays with numpy.savez(path, X=..., y=...)")
    if head[:4] != _ZIP_MAGIC:
        raise CompressorError(f"{what} {path} is not an .npz file (numpy.savez writes one)")
    if not zipfile.is_zipfile(path):
        raise CompressorError(f"{what} {path} is truncated (its zip archive has no end)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise CompressorError(f"{what} {path} lacks array(s) {missing}; it has "
                                      f"{sorted(f.files)} (expected {list(keys)})")
            return {k: f[k] for k in keys}
    except CompressorError:
        raise
    except ValueError as exc:  # numpy's refusal of pickled object arrays
        raise CompressorError(f"{what} {path}: {_first_line(exc)} (store numeric arrays)"
                              ) from None
    except Exception as exc:  # zlib / CRC / member errors of a damaged archive
        raise CompressorError(f"{what} {path} is damaged ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def features(x: np.ndarray, where: str, name: str = "X") -> np.ndarray:
    """x as float32 (N, features...), every value finite after the conversion."""
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer)
                               or np.issubdtype(x.dtype, np.floating)):
        raise CompressorError(f"{where}: {name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0 or int(np.prod(x.shape[1:])) == 0:
        raise CompressorError(f"{where}: {name} must have shape (N, features...) with N >= 1 "
                              f"and at least one feature, got {x.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        out = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        index = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise CompressorError(f"{where}: {name}[{', '.join(map(str, index))}] = {x[index]} is "
                              f"not a finite float32 (NaN, inf or beyond 3.4e38); clean the data "
                              "first")
    return out


def labels(y: np.ndarray, n: int, where: str, name: str = "y") -> np.ndarray:
    """y as int64 class indices 0..K-1, with 2 <= K <= min(MAX_CLASSES, n)."""
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise CompressorError(f"{where}: {name} must be integer labels of shape ({n},), got "
                              f"{y.dtype} {y.shape}")
    bad = (y < 0) | (y >= MAX_CLASSES)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CompressorError(f"{where}: labels must be class indices in 0..{MAX_CLASSES - 1}, "
                              f"got {name}[{first}] = {y[first]}")
    classes = int(y.max()) + 1
    if classes > n:
        raise CompressorError(f"{where}: labels go up to {classes - 1} but there are only {n} "
                              f"samples; labels must be class indices 0..K-1, not ids")
    if len(np.unique(y)) < 2:
        raise CompressorError(f"{where}: every label is {y[0]}; classification needs at least "
                              "2 classes")
    return y.astype(np.int64)


def check_split(n: int, n_test: int, where: str) -> None:
    if n_test < 1 or n - n_test < 1:
        raise CompressorError(f"{where}: {n} samples are too few for a non-empty train and test "
                              f"split ({n_test} would be test samples)")


def cached(path: Path, keys: tuple[str, ...], make: Callable[[], dict[str, np.ndarray]],
           check: Callable[[dict], None]) -> dict[str, np.ndarray]:
    """Arrays cached in an .npz at `path`, made (and written atomically) when missing. A cache
    file that cannot be read or fails `check` is regenerated: it is derived data."""
    if path.exists():
        try:
            arrays = read_npz(path, keys, "cached dataset")
            check(arrays)
            return arrays
        except CompressorError as exc:
            print(f"compressor: {exc}; regenerating it", file=sys.stderr)
    check_writable(path.parent, "the cache directory (COMPRESSOR_CACHE)", directory=True)
    arrays = make()
    check(arrays)
    write_cache(path, arrays)
    return arrays


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        write_bytes_atomic(path, buffer.getvalue())  # a kill leaves no half file
    except OSError as exc:
        # the directory check names the reason (a file in the way, a read-only place)
        check_writable(path.parent, "the cache directory (COMPRESSOR_CACHE)", directory=True)
        raise CompressorError(f"cannot write the dataset cache {path} "
                              f"({exc.strerror or exc}); set COMPRESSOR_CACHE to a writable "
                              "directory") from None
