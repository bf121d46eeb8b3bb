"""Every workflow on every shipped architecture (small configs, random init): the same functions
benchmarks/architectures.py tabulates, checked against what each workflow promises."""

import pytest
import torch
from torch import nn

from benchmarks.architectures import SIZES, TOKENS, run_workflow

ARCHS = sorted(SIZES["test"])
CNNS = {"resnet18", "resnet50", "mobilenet_v2", "vit", "conv1d"}  # first layer: 1-3 channels
RECURRENT = {"lstm_lm", "onlstm_lm"}


@pytest.mark.parametrize("arch", ARCHS)
def test_global_pruning_keeps_every_layer_alive(arch):
    result = run_workflow(arch, "prune")
    assert result["ok"], result["summary"]
    assert result["sparsity"] == pytest.approx(0.8, abs=2e-3)  # the total stays exact
    assert result["min_kept"] >= 0.01 - 1e-9  # the per-layer floor
    assert result["warnings"] >= len(result["floored"])  # every floored layer was warned about


@pytest.mark.parametrize("arch", ARCHS)
def test_nm_prunes_what_it_can_and_names_the_rest(arch):
    result = run_workflow(arch, "nm")
    assert result["ok"], result["summary"]
    if arch in CNNS:  # 1 or 3 input channels are no multiple of 4
        first = min(result["skipped"], key=len)
        assert "not a multiple of M=4" in result["skipped"][first]
    if arch in TOKENS:
        assert any("lookup" in reason for reason in result["skipped"].values())
    if arch in ("bert", "gpt", "vit"):  # attention projections are pruned 2:4
        assert any("q_proj" in n or "query" in n or "in_proj" in n for n in result["pruned"])


@pytest.mark.parametrize("arch", ARCHS)
def test_one_lottery_round(arch):
    result = run_workflow(arch, "lottery")
    assert result["ok"], result["summary"]
    assert result["min_sparsity"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("arch", ARCHS)
def test_inq_quantizes_every_weight_and_packs_every_linear_and_conv(arch):
    result = run_workflow(arch, "inq")
    assert result["ok"], result["summary"]
    assert result["names"] == result["weights"]  # attention, recurrent, embedding included
    assert result["unpacked_layers"] == []  # embeddings and nn.LSTM are packed too
    assert result["float_storage"] == []  # and the report says so, weight by weight


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_is_verified_in_onnxruntime_and_names_what_stays_float(arch):
    result = run_workflow(arch, "int8", fast=True)
    assert result["ok"], result["summary"]
    assert result["int8"] >= 1
    for weight, reason in result["kept_float"].items():
        assert reason, weight
        assert "embed" in weight or "rnn" in weight  # only lookups and recurrences stay float


@pytest.mark.parametrize("arch", ARCHS)
def test_sparsify_keeps_the_outputs_of_the_pruned_model(arch):
    result = run_workflow(arch, "sparsify")
    assert result["ok"], result["summary"]
    if arch in ("bert", "gpt", "vit"):
        assert result["candidates"] >= 4 * 2  # q, k, v, out of both blocks were considered


@pytest.mark.parametrize("arch", ARCHS)
def test_export_of_the_compressed_model_is_verified(arch):
    result = run_workflow(arch, "export", fast=True)
    assert result["ok"], result["summary"]
    assert result["size_ratio"] > 1.2
    assert result["dynamic_dims"] == ((1,) if arch in TOKENS else ())


def test_a_failing_workflow_is_reported_not_raised(monkeypatch):
    from benchmarks import architectures

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setitem(architectures.RUNNERS, "prune", broken)
    result = run_workflow("conv1d", "prune")
    assert not result["ok"] and "RuntimeError: boom" in result["summary"]


def test_recurrent_and_embedding_weights_are_on_their_inq_levels():
    from benchmarks.architectures import build, make_data
    from compressor.formats.pow2_levels import quantize_to_levels
    from compressor.quantization import INQ, INQConfig

    model, data = build("lstm_lm"), make_data("lstm_lm")
    run = INQ(model, data, INQConfig(bits=4, portions=(1.0,), steps_per_stage=0), progress=False)
    run.run()
    report = run.report()
    for name in ("embed.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "decoder.weight"):
        weight = model.get_parameter(name).detach()
        assert torch.equal(quantize_to_levels(weight, run.state.n1[name], 4), weight), name
        assert report[name]["action"] == "INQ 4-bit"
    assert report["rnn.bias_ih_l0"]["action"] == "kept float"
    assert isinstance(model.rnn, nn.LSTM)
