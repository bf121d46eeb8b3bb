"""The commands chain by model file, and user mistakes are one line on stderr with exit code 2
(in a subprocess for the cases that must show no traceback)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compressor.cli import main
from compressor.data import load_dataset
from compressor.io import load_checked, save_checked
from compressor.pipeline.modelfile import load_model

ROOT = Path(__file__).resolve().parents[1]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compressor.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    steps = [["train", "--dataset", "digits", "--model", "lenet", "--steps", "60", "--out",
              d / "dense.pt"],
             ["prune", d / "dense.pt", "--sparsity", "0.8", "--steps", "30", "--out",
              d / "pruned.pt"],
             ["quantize", d / "pruned.pt", "--method", "inq", "--bits", "5", "--portions",
              "0.5,1", "--steps-per-stage", "10", "--final-steps", "0", "--out", d / "q.pt"],
             ["sparsify", d / "q.pt", "--out", d / "s.pt"],
             ["export", d / "s.pt", "--out", d / "m.onnx", "--batch-size", "4"]]
    for args in steps:
        assert main([str(a) for a in args]) == 0, args
    return d


def test_chain_ends_in_an_onnx_file_equal_to_the_last_model(chain, capsys):
    assert main(["verify", str(chain / "m.onnx"), str(chain / "s.pt")]) == 0
    assert capsys.readouterr().out.startswith("OK:")
    model, _ = load_model(chain / "s.pt")
    data = load_dataset("digits")
    x = data.x_test[:4].contiguous()
    session = ort.InferenceSession(str(chain / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    quantized, _ = load_model(chain / "q.pt")
    weights = [m for m in quantized.modules() if type(m).__name__ == "Pow2Linear"]
    assert len(weights) == 3 and (chain / "q.pt").stat().st_size * 4 < \
        (chain / "dense.pt").stat().st_size


def test_history_travels_with_the_model(chain):
    from compressor.history import history

    model, _ = load_model(chain / "s.pt")
    assert [h["stage"] for h in history(model)] == ["train", "prune", "quantize", "sparsify"]
    assert history(model)[2]["layers"]["1.weight"]["n1"] is not None


def bad_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case", ["missing data", "labels out of range", "nan in X",
                                  "factory raises", "config typo", "unwritable root",
                                  "tampered model file", "flipped bit", "bad flag value",
                                  "stray flag", "opset"])
def test_mistakes_are_one_line_exit_2(case, tmp_path, chain):
    x = np.random.rand(20, 4).astype(np.float32)
    if case == "missing data":
        args = ["train", "--data", tmp_path / "nope.npz", "--out", tmp_path / "m.pt"]
        expect = "does not exist"
    elif case == "labels out of range":
        path = bad_npz(tmp_path / "d.npz", X=x, y=np.full(20, 10**6))
        args = ["train", "--data", path, "--out", tmp_path / "m.pt"]
        expect = "labels must be class indices in 0..9999"
    elif case == "nan in X":
        x[3, 1] = np.nan
        path = bad_npz(tmp_path / "d.npz", X=x, y=np.arange(20) % 2)
        args = ["train", "--data", path, "--out", tmp_path / "m.pt"]
        expect = "X[3, 1] = nan is not a finite float32"
    elif case == "factory raises":
        args = ["train", "--model", "tests.test_cli:raising_factory", "--out", tmp_path / "m.pt"]
        expect = "failed with"
    elif case == "config typo":
        (tmp_path / "c.toml").write_text("[prune_config]\nsparsty = 0.5\n")
        args = ["run", tmp_path / "c.toml", "--root", tmp_path]
        expect = "did you mean 'sparsity'"
    elif case == "unwritable root":
        (tmp_path / "file").write_text("")
        args = ["run", "--root", tmp_path / "file", "--steps", "1"]
        expect = "is a file, not a directory"
    elif case == "tampered model file":
        payload = load_checked(chain / "dense.pt")
        payload["architecture"]["factory"] = "digits_cnn"
        save_checked(tmp_path / "t.pt", payload)
        args = ["prune", tmp_path / "t.pt", "--out", tmp_path / "p.pt"]
        expect = "does not fit its architecture"
    elif case == "flipped bit":
        raw = bytearray((chain / "dense.pt").read_bytes())
        raw[len(raw) // 2] ^= 0x10
        (tmp_path / "f.pt").write_bytes(bytes(raw))
        args = ["sparsify", tmp_path / "f.pt", "--out", tmp_path / "s.pt"]
        expect = "f.pt"
    elif case == "bad flag value":
        args = ["prune", chain / "dense.pt", "--sparsity", "nan", "--out", tmp_path / "p.pt"]
        expect = "sparsity must be a finite number"
    elif case == "stray flag":
        args = ["quantize", chain / "dense.pt", "--method", "inq", "--observer", "minmax",
                "--out", tmp_path / "q.pt"]
        expect = "--observer has no effect with --method inq"
    else:
        args = ["export", chain / "s.pt", "--opset", "1000", "--out", tmp_path / "m.onnx"]
        expect = "opset must be in 17.."
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert expect in result.stderr
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "p.pt").exists()


def raising_factory(**kwargs):
    raise RuntimeError("boom")


def test_help_and_import_load_no_onnx():
    code = ("import sys, compressor, compressor.cli\n"
            "try:\n    compressor.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('onnx', 'onnxruntime', 'compressor.commands.run') "
            "if m in sys.modules]\nprint('LOADED', bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120).stdout
    assert "LOADED []" in out and "prune" in out
