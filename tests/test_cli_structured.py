"""Structured pruning and layer robustness from the command line, chained by model file, and
`compressor run --prune structured`."""

import json

import pytest

from compressor.cli import main
from compressor.pipeline.modelfile import load_model


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    d = tmp_path_factory.mktemp("structured")
    assert main(["train", "--dataset", "digits", "--model", "lenet", "--steps", "40",
                 "--out", str(d / "dense.pt")]) == 0
    return d


def test_prune_structured_shrinks_and_chains(dense, capsys):
    out = dense / "small.pt"
    assert main(["prune", str(dense / "dense.pt"), "--structured", "--ratio", "0.5",
                 "--criterion", "l1", "--steps", "10", "--out", str(out)]) == 0
    small, _ = load_model(out)
    big, _ = load_model(dense / "dense.pt")
    assert small[1].out_features == big[1].out_features // 2
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())
    assert main(["export", str(out), "--out", str(dense / "small.onnx")]) == 0
    assert main(["verify", str(dense / "small.onnx"), str(out)]) == 0


def test_structured_flags_do_not_mix(dense, capsys):
    assert main(["prune", str(dense / "dense.pt"), "--ratio", "0.5", "--out",
                 str(dense / "x.pt")]) == 2
    assert "--ratio has no effect without --structured" in capsys.readouterr().err
    assert main(["prune", str(dense / "dense.pt"), "--structured", "--criterion", "magnitude",
                 "--out", str(dense / "x.pt")]) == 2
    assert "StructuredConfig.criterion must be one of" in capsys.readouterr().err


def test_robustness_command(dense):
    out = dense / "rob"
    assert main(["robustness", str(dense / "dense.pt"), "--steps", "30", "--checkpoints",
                 "0,5", "--out-dir", str(out)]) == 0
    result = json.loads((out / "robustness.json").read_text())
    assert result["layers"] == ["1", "3", "5"] and len(result["reinit"][0]) == 2
    assert set(result["budgets"]) == {"channels", "sparsity", "bits"}
    assert (out / "heatmap.png").stat().st_size > 1000


def test_run_with_structured_pruning(tmp_path):
    assert main(["run", "--model", "lenet", "--dataset", "digits", "--steps", "30", "--prune",
                 "structured", "--quantize", "none", "--skip", "bench", "--finetune-steps",
                 "10", "--name", "s", "--root", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    prune = metrics["stages"]["prune"]
    assert prune["params_after"] < prune["params_before"]
    assert metrics["stages"]["verify"]["ok"]
