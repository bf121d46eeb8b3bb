"""Built-in datasets and the user .npz loader, including its error messages."""

import numpy as np
import pytest

from compressor.data import load_dataset
from compressor.errors import CompressorError


def test_digits_shapes():
    d = load_dataset("digits")
    assert d.x_train.shape[1:] == (64,) and d.num_classes == 10
    assert len(d.x_train) + len(d.x_test) == 1797
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1


def test_mnist1d_generated_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    d = load_dataset("mnist1d", num_samples=500, seed=3)
    assert d.x_train.shape == (400, 40) and d.x_test.shape == (100, 40)
    assert list(tmp_path.glob("mnist1d-*.npz"))
    again = load_dataset("mnist1d", num_samples=500, seed=3)
    assert (again.x_train == d.x_train).all()


def test_npz_roundtrip(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, X=np.random.rand(50, 3, 4), y=np.arange(50) % 3)
    d = load_dataset(str(path))
    assert d.feature_shape == (3, 4) and d.num_classes == 3
    assert len(d.x_train) == 40


@pytest.mark.parametrize("arrays, message", [
    ({"X": np.zeros((5, 2))}, "lacks array"),
    ({"X": np.zeros((5, 2)), "y": np.zeros(4, dtype=int)}, "y must be integer labels"),
    ({"X": np.zeros((5, 2)), "y": np.zeros(5)}, "y must be integer labels"),
    ({"X": np.zeros(5), "y": np.zeros(5, dtype=int)}, r"X must have shape \(N, features"),
])
def test_npz_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CompressorError, match=message):
        load_dataset(str(path))


def test_npz_not_a_zip(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_text("not numpy")
    with pytest.raises(CompressorError, match="is not an .npz file"):
        load_dataset(str(path))


def test_unknown_dataset():
    with pytest.raises(CompressorError, match="unknown dataset"):
        load_dataset("imagenet")
