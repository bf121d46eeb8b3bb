"""Round trip for every model kind: export -> onnx.checker -> onnxruntime -> compare with PyTorch
(to_onnx does all of it and raises when anything fails), plus sizes against the dense export."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from compressor.export import ExportConfig, to_onnx
from compressor.export.encode import MIN_ELEMENTS
from compressor.export.verify import decoded_weights
from compressor.formats.pow2_levels import pow2_quantize
from compressor.nn import ONLSTM, Pow2Conv2d, Pow2Linear, SparseLinear
from compressor.pruning import PruneConfig, fold_masks, prune_, set_mask
from compressor.quantization import fold_batchnorm

DECODER_SLACK = 3000  # bytes per encoded tensor for decode nodes, small constants and names


def export(model, inputs, tmp_path, **config):
    config.setdefault("measure_latency", False)  # timed once, in the first test
    path = tmp_path / "model.onnx"
    report = to_onnx(model, inputs, path, ExportConfig(**config), dense_path=tmp_path / "d.onnx")
    onnx.checker.check_model(str(path))
    return report, onnx.load(str(path))


def mlp(n_in=64, hidden=256, n_out=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def weights_of(model):
    return [p for p in model.parameters() if p.dim() > 1]


def magnitude_prune_(model, sparsity):
    """Prune every weight layerwise with compressor's pruning, masks folded in."""
    return fold_masks(prune_(model, PruneConfig(sparsity=sparsity)))


def test_default_exporter_is_dynamo_with_opset_and_ir_onnxruntime_accepts(tmp_path):
    report, model = export(mlp(), torch.randn(3, 64), tmp_path, measure_latency=True)
    assert report.exporter == "dynamo"
    assert report.opset == 18 and model.opset_import[0].version == 18
    assert model.ir_version <= 10
    assert report.max_error <= report.tolerance
    assert report.ort_latency_s > 0 and report.dense_ort_latency_s > 0
    assert all(e["kind"] == "dense" for e in report.encodings)  # nothing to compress


def test_torchscript_exporter_still_works(tmp_path):
    model = mlp()
    magnitude_prune_(model, 0.9)
    report, _ = export(model, torch.randn(3, 64), tmp_path, exporter="torchscript")
    assert report.exporter == "torchscript" and report.size_ratio > 2


def test_pruned_masks_are_folded_and_stored_as_bitmap(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
    mask = (torch.rand(256, 128, generator=torch.Generator().manual_seed(1)) > 0.9).float()
    set_mask(model[0], "weight", mask)
    report, onnx_model = export(model, torch.randn(4, 128), tmp_path)
    assert report.notes["folded_masks"] == ["0.weight"]
    assert model[0].weight_mask is not None  # the caller's model keeps its mask
    names = [t.name for t in onnx_model.graph.initializer]
    assert not any("mask" in n for n in names)
    (big,) = [e for e in report.encodings if e["kind"] in ("bitmap", "gaps")]
    nnz, numel = big["nonzeros"], 128 * 256
    assert nnz == int(mask.sum())
    # positions: 1 bit per element (bitmap) or ~1 byte per nonzero (gaps), + 4 bytes per nonzero
    positions = min(numel / 8, nnz + numel / 255)
    expected = report.dense_bytes - 4 * numel + positions + 4 * nnz + DECODER_SLACK
    assert report.bytes <= expected
    assert report.same_ort_graph_as_dense


def test_torch_prune_reparametrisation_is_removed(tmp_path):
    from torch.nn.utils import prune

    model = mlp()
    prune.l1_unstructured(model[0], "weight", amount=0.8)
    report, onnx_model = export(model, torch.randn(2, 64), tmp_path)
    assert report.notes["folded_masks"] == ["0.weight"]
    assert not any("orig" in t.name or "mask" in t.name.split("__")[0]
                   for t in onnx_model.graph.initializer)
    assert report.size_ratio > 1.5


def test_sparse_module_exports_through_its_dense_equivalent(tmp_path):
    model = magnitude_prune_(mlp(), 0.9)
    sparse = nn.Sequential(SparseLinear.from_dense(model[0]), nn.ReLU(), model[2])
    report, _ = export(sparse, torch.randn(5, 64), tmp_path)
    assert report.notes["converted"] == ["0: SparseLinear -> Linear"]
    assert report.size_ratio > 2


def pow2_cnn(bits=5):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 32, 3, stride=2, padding=1)  # big enough that codes beat dense
    magnitude_prune_(nn.Sequential(conv), 0.5)
    linear = nn.Linear(32 * 5 * 5, 10)
    return nn.Sequential(Pow2Conv2d.from_float(conv, bits), nn.ReLU(), nn.Flatten(),
                         Pow2Linear.from_float(linear, bits))


@pytest.mark.parametrize("bits", [2, 5])
def test_pow2_weights_are_codes_and_decode_bit_exactly(tmp_path, bits):
    model = pow2_cnn(bits)
    report, onnx_model = export(model, torch.randn(2, 8, 9, 9), tmp_path)
    codebooks = [e for e in report.encodings if e["kind"].endswith("codebook")]
    assert len(codebooks) == 2
    assert all(e["pow2_bits"] <= bits and e["distinct"] <= 2 ** (bits - 1) for e in codebooks)
    for e in codebooks:  # the narrowest code width that holds the table
        assert e["code_bits"] == min(k for k in range(1, 9) if 2**k >= e["distinct"])
        assert e["code_bits"] <= bits - 1
    decoded = decoded_weights(onnx_model, {e["name"]: 1 for e in codebooks})
    for name, module in (("0.weight", model[0]), ("3.weight", model[3])):
        want = module.dequantized_weight().numpy()
        got = decoded[name]
        # values equal exactly (a pruned -0.0 comes back as +0.0); Linear may be stored as W^T
        assert np.array_equal(got, want) or np.array_equal(got, want.T), name


def test_pow2_5bit_file_size_follows_the_code_width(tmp_path):
    torch.manual_seed(0)
    linear = nn.Linear(256, 256)
    model = nn.Sequential(Pow2Linear.from_float(linear, 5))
    report, _ = export(model, torch.randn(2, 256), tmp_path)
    numel = 256 * 256
    nnz = int((model[0].dequantized_weight() != 0).sum())
    # bitmap (only when there are zeros) + 4-bit codes + a table of at most 16 floats
    expected = report.dense_bytes - 4 * numel + numel / 8 + nnz / 2 + 64 + DECODER_SLACK
    assert report.bytes <= expected
    assert report.size_ratio > 5
    assert report.same_ort_graph_as_dense


def test_plain_inq_weights_are_detected_from_values(tmp_path):
    model = mlp()
    with torch.no_grad():
        for p in weights_of(model):
            p.copy_(pow2_quantize(p, 4))
    report, _ = export(model, torch.randn(2, 64), tmp_path)
    kinds = {e["name"]: e for e in report.encodings if e["kind"].endswith("codebook")}
    assert len(kinds) == 2 and all(e["pow2_bits"] <= 4 for e in kinds.values())


def test_onlstm_exports_as_one_scan_with_a_dynamic_sequence_length(tmp_path):
    torch.manual_seed(0)
    model = ONLSTM(6, 8, chunk_size=2)
    fused = model.use_fused_kernels
    # dim 0 is time here; the random inputs are 6 steps long, the example 5
    report, onnx_model = export(model, torch.randn(5, 3, 6), tmp_path, dynamic_dims=(0,))
    assert report.notes["converted"] == ["<model>: ONLSTM -> ScanONLSTM"]
    assert model.use_fused_kernels == fused  # the caller's model is left as it was
    assert {n.domain for n in onnx_model.graph.node} <= {"", "ai.onnx"}
    assert "Scan" in {n.op_type for n in onnx_model.graph.node}
    dim = onnx_model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value


def test_batchnorm_folded_cnn_round_trip(tmp_path):
    from compressor.models import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    model.train()
    model(torch.randn(32, 1, 8, 8))  # give BN running statistics that are not 0/1
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    report, onnx_model = export(folded, torch.randn(4, 1, 8, 8), tmp_path)
    assert "BatchNormalization" not in {n.op_type for n in onnx_model.graph.node}
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-4, atol=1e-5)


def test_small_tensors_stay_dense(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.zero_()
    report, onnx_model = export(model, torch.randn(2, 4), tmp_path)
    assert all(e["kind"] == "dense" for e in report.encodings)
    assert all(numpy_helper.to_array(t).size < MIN_ELEMENTS for t in onnx_model.graph.initializer)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_dynamic_batch(tmp_path, exporter):
    model = mlp()
    magnitude_prune_(model, 0.9)
    report, onnx_model = export(model, torch.randn(3, 64), tmp_path, dynamic_batch=True,
                                exporter=exporter)
    dim = onnx_model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value  # symbolic; random inputs used batch 4
    assert report.max_error <= report.tolerance
