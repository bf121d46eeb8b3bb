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


def _sparsity(weight):
    return float((weight == 0).float().mean())


def test_budgets_feed_prune_structured_quantize_and_lottery(dense, capsys):
    """robustness.json's budgets set each layer's own sparsity, channel ratio, bit width and
    lottery rate; layers it does not name keep the flags' value."""
    path = dense / "budgets.json"
    path.write_text(json.dumps({"budgets": {
        "sparsity": {"1.*": 0.5, "3.*": 0.9}, "channels": {"1": 0.25, "3": 0.5},
        "bits": {"1": 3, "5": 4}}}))
    d = str(dense)
    assert main(["prune", f"{d}/dense.pt", "--sparsity", "0.7", "--budgets", str(path),
                 "--steps", "2", "--out", f"{d}/b_pruned.pt"]) == 0
    pruned, _ = load_model(dense / "b_pruned.pt")
    got = [_sparsity(pruned[k].weight) for k in (1, 3, 5)]
    assert got == pytest.approx([0.5, 0.9, 0.7], abs=0.01)

    assert main(["prune", f"{d}/dense.pt", "--structured", "--ratio", "0.1", "--criterion",
                 "l1", "--budgets", str(path), "--steps", "2", "--out", f"{d}/b_small.pt"]) == 0
    small, _ = load_model(dense / "b_small.pt")
    big, _ = load_model(dense / "dense.pt")
    assert small[1].out_features == big[1].out_features - round(0.25 * big[1].out_features)
    assert small[3].out_features == big[3].out_features - round(0.5 * big[3].out_features)

    assert main(["quantize", f"{d}/dense.pt", "--bits", "5", "--budgets", str(path),
                 "--portions", "0.5,1", "--steps-per-stage", "2", "--final-steps", "0",
                 "--out", f"{d}/b_q.pt"]) == 0
    quantized, _ = load_model(dense / "b_q.pt")
    assert [quantized[k].bits for k in (1, 3, 5)] == [3, 5, 4]
    assert "INQ 5/4/3-bit" in capsys.readouterr().err  # the progress bar names the widths

    assert main(["lottery", f"{d}/dense.pt", "--rounds", "2", "--steps", "4", "--eval-every",
                 "2", "--controls", "reinit", "--budgets", str(path), "--root", f"{d}/lot",
                 "--out", f"{d}/b_ticket.pt"]) == 0
    ticket, _ = load_model(dense / "b_ticket.pt")
    got = [_sparsity(ticket[k].weight) for k in (1, 3)]
    assert got == pytest.approx([0.5, 0.9], abs=0.01)  # two rounds reach the final budget


@pytest.mark.parametrize("content, message", [
    ("not json", "is not a JSON file"),
    ('{"budgets": {"channels": {"1": 0.5}}}', "has no sparsities ('budgets' -> 'sparsity')"),
    ('{"budgets": {"sparsity": {"1.*": "half"}}}', "sparsity of ['1.*'] are not numbers"),
    ('{"budgets": {"sparsity": {"9.*": 0.5}}}', "pattern '9.*' matches no prunable weight"),
    ('{"budgets": {"sparsity": {"1.*": 1.5}}}', "must be a fraction in (0, 1)"),
])
def test_bad_budgets_are_one_line_errors(dense, tmp_path, capsys, content, message):
    path = tmp_path / "b.json"
    path.write_text(content)
    assert main(["prune", str(dense / "dense.pt"), "--budgets", str(path), "--steps", "1",
                 "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_budgets_flag_conflicts(dense, tmp_path, capsys):
    path = tmp_path / "b.json"
    path.write_text('{"budgets": {"bits": {"1": 3}, "sparsity": {"1.*": 0.5}}}')
    assert main(["quantize", str(dense / "dense.pt"), "--method", "int8", "--budgets",
                 str(path), "--out", str(tmp_path / "o.pt")]) == 2
    assert "--budgets has no effect with --method int8" in capsys.readouterr().err
    assert main(["prune", str(dense / "dense.pt"), "--nm", "2:4", "--budgets", str(path),
                 "--out", str(tmp_path / "o.pt")]) == 2
    assert "--budgets has no effect with --nm 2:4" in capsys.readouterr().err
    assert main(["lottery", str(dense / "dense.pt"), "--strategy", "global", "--budgets",
                 str(path), "--out", str(tmp_path / "o.pt"), "--root", str(tmp_path)]) == 2
    assert "--budgets needs --strategy layerwise" in capsys.readouterr().err
    assert main(["prune", str(dense / "dense.pt"), "--budgets", str(tmp_path / "none.json"),
                 "--out", str(tmp_path / "o.pt")]) == 2
    assert "--budgets" in capsys.readouterr().err
