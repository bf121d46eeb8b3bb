"""Built-in datasets and the user .npz loader, including its error messages."""

import numpy as np
import pytest
import torch

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


def _damage(path, at: float):
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name, kwargs", [("shapes", {"num_samples": 40}),
                                          ("mnist1d", {"num_samples": 200})])
@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "garbage"])
def test_corrupt_cache_is_regenerated(tmp_path, monkeypatch, capsys, name, kwargs, damage):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    first = load_dataset(name, **kwargs)
    (path,) = tmp_path.glob(f"{name}-*.npz")
    if damage == "flipped byte":
        _damage(path, 0.6)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_text("garbage")
    capsys.readouterr()
    again = load_dataset(name, **kwargs)
    err = capsys.readouterr().err
    assert f"cached dataset {path}" in err and "regenerating it" in err and err.count("\n") == 1
    assert torch.equal(again.x_train, first.x_train) and torch.equal(again.y_test, first.y_test)
    load_dataset(name, **kwargs)  # the regenerated file is read back without a word
    assert capsys.readouterr().err == ""


def test_unwritable_cache_fails_before_generating(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(CompressorError, match=r"COMPRESSOR_CACHE.*is a file, not a directory"):
        load_dataset("shapes", num_samples=40)


def test_builtin_data_is_validated_too(monkeypatch):
    """A generator or cache gone wrong must not train on NaN (the same check as user data)."""
    from compressor.data import datasets

    real = datasets.DATASETS["digits"]

    def broken(**kwargs):
        data = real(**kwargs)
        data.x_test[5, 7] = float("nan")
        return data

    monkeypatch.setitem(datasets.DATASETS, "digits", broken)
    with pytest.raises(CompressorError, match=r"dataset digits: x_test\[5, 7\] = nan"):
        load_dataset("digits")
