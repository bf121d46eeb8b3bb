"""`compressor run` end to end on a small model: the report agrees with the artefacts (sizes
re-measured from the files, accuracies recomputed from the saved model files), a rerun only
reports, and changing one stage's settings reruns that stage and the ones after it alone."""

import json

import pytest
import torch
from torch import nn

from compressor.cli import main
from compressor.data import load_dataset
from compressor.pipeline.bench import layer_latency
from compressor.pipeline.modelfile import load_model
from compressor.train import evaluate

ARGS = ["run", "--model", "lenet", "--dataset", "digits", "--steps", "60", "--finetune-steps",
        "30", "--sparsity", "0.8", "--steps-per-stage", "10", "--final-steps", "10",
        "--portions", "0.5,1", "--batch-sizes", "1,4", "--threads", "1", "--name", "t"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main([*ARGS, "--root", str(root)]) == 0
    return root / "t"


def test_report_matches_artefacts(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name, size in metrics["sizes"].items():
        assert (run_dir / name).stat().st_size == size, name
    data = load_dataset("digits")
    for stage, file in [("train", "dense.pt"), ("prune", "pruned.pt"),
                        ("quantize", "quantized.pt"), ("sparsify", "sparse.pt")]:
        model, _ = load_model(run_dir / file)
        assert evaluate(model, data.x_test, data.y_test) == pytest.approx(
            metrics["accuracy"][stage], abs=1e-9), stage
    report = (run_dir / "report.md").read_text()
    for stage, acc in metrics["accuracy"].items():
        assert f"| {stage} | {acc:.4f} |" in report
    assert f"| model.onnx | {metrics['sizes']['model.onnx']:,} |" in report
    whole = metrics["stages"]["sparsify"]["whole_model"]  # what the converter did, as timed
    assert whole["converted_ms"] > 0 and \
        f"dense {whole['dense_ms']:.3f} ms, converted {whole['converted_ms']:.3f} ms" in report
    traced = whole["traced"]
    assert not traced or f"Inference of {', '.join(traced['stages'])} replayed" in report
    for png in ("accuracy.png", "size.png", "latency.png", "layers.png"):
        assert (run_dir / png).stat().st_size > 1000 and f"]({png})" in report
    bench = metrics["stages"]["bench"]
    assert [row["batch"] for row in bench["whole_model"]] == [1, 4]
    assert metrics["stages"]["verify"]["ok"] and metrics["sizes"]["model.onnx"] < \
        metrics["sizes"]["dense.onnx"]


def test_rerun_keeps_finished_stages_and_reruns_changed_ones(run_dir, capsys):
    root = str(run_dir.parent)
    capsys.readouterr()
    assert main([*ARGS, "--root", root]) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier, kept") == 8
    before = (run_dir / "pruned.pt").stat().st_mtime_ns
    args = [*ARGS, "--root", root, "--bits", "4", "--skip", "bench"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[1/8] train: done earlier" in out and "[2/8] prune: done earlier" in out
    assert "[3/8] quantize ..." in out and "[5/8] export ..." in out
    assert (run_dir / "pruned.pt").stat().st_mtime_ns == before
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "bench" not in metrics["stages"]


class _Logged(nn.Module):
    """A layer (its name holds a _LAYER_HINTS word) that logs each call; `tag` names it."""

    def __init__(self, tag: str, log: list):
        super().__init__()
        self.tag, self.log, self.lin = tag, log, nn.Linear(4, 4)

    def forward(self, x):
        self.log.append(self.tag)
        return self.lin(x)


class LoggedLinear(_Logged):
    pass


def test_layer_latency_interleaves_every_layers_samples():
    log: list[str] = []
    compressed = nn.Sequential(LoggedLinear("a", log), LoggedLinear("b", log))
    dense = nn.Sequential(nn.Linear(4, 4))  # a twin for layer 0 only
    rows = layer_latency(dense, compressed, torch.randn(2, 4), repeat=3)
    assert [r["layer"] for r in rows] == ["0", "1"]
    assert rows[0]["dense_ms"] > 0 and rows[0]["speedup"] == pytest.approx(
        rows[0]["dense_ms"] / rows[0]["compressed_ms"])
    assert "dense_ms" not in rows[1] and rows[1]["compressed_ms"] > 0
    # Layer a's samples go on after layer b's have begun (its first call is the forward that
    # captures the inputs): not all of a's, then all of b's.
    b_calls = [i for i, tag in enumerate(log) if tag == "b"]
    assert len(b_calls) > 1 and max(i for i, tag in enumerate(log) if tag == "a") > b_calls[1]


def test_layer_latency_times_a_fused_layer_against_what_it_replaced():
    """A compressed layer whose BatchNorm and activation became nn.Identity is timed against the
    dense twin followed by those modules (named in dense_of), not against the twin alone; the
    twin's own submodules and a later layer are not taken in."""
    log: list[str] = []

    class LoggedNorm(nn.Module):
        def forward(self, x):
            log.append("norm")
            return x * 2

    dense = nn.Sequential(LoggedLinear("twin", log), LoggedNorm(), nn.ReLU(), nn.Linear(4, 4))
    compressed = nn.Sequential(nn.Linear(4, 4), nn.Identity(), nn.Identity(), nn.Linear(4, 4))
    rows = layer_latency(dense, compressed, torch.randn(2, 4), repeat=3)
    assert [r["layer"] for r in rows] == ["0", "3"]
    assert rows[0]["dense_of"] == ["0", "1", "2"] and "dense_of" not in rows[1]
    # the dense side's timed calls (warm-ups and 3 samples) ran the norm too, beyond the one
    # forward that captures the dense model's inputs and call order
    assert log.count("norm") > 1 + 3 and log.count("norm") == log.count("twin")

