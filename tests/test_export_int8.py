"""int8 post-training quantization, BatchNorm folding, and their QDQ export."""


import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from compressor.errors import CompressorError
from compressor.export import ExportConfig, to_onnx
from compressor.formats.int8_codes import (
    activation_quant_params,
    fake_quant_uint8,
    weight_quant_params,
)
from compressor.pruning import PruneConfig, fold_masks, prune_
from compressor.quantization import Int8Config, Int8FakeQuant, fold_batchnorm, quantize_int8


def trained_bn(model, shape):
    torch.manual_seed(0)
    model.train()
    for _ in range(3):
        model(torch.randn(16, *shape) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("layers,shape", [
    ((nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)), (3, 6, 6)),
    ((nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5)), (3, 6, 6)),
    ((nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4)), (2, 9)),
    ((nn.Linear(7, 4), nn.BatchNorm1d(4)), (7,)),
])
def test_fold_batchnorm_keeps_outputs(layers, shape):
    model = trained_bn(nn.Sequential(*layers, nn.ReLU()), shape)
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.Identity)
    assert isinstance(model[1], nn.modules.batchnorm._BatchNorm)  # the input is not modified
    x = torch.randn(4, *shape)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_leaves_unpaired_bn():
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3))
    assert isinstance(fold_batchnorm(model)[1], nn.BatchNorm1d)


@pytest.mark.parametrize("qmax", [127, 63])
def test_weight_quant_params_are_per_channel_symmetric(qmax):
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).float().reshape(-1, 1, 1, 1)
    w[2] = 0
    codes, scale = weight_quant_params(w, qmax)
    assert codes.dtype == torch.int8 and codes.abs().max() <= qmax
    assert (codes[[0, 1, 3, 4, 5]].reshape(5, -1).abs().amax(1) == qmax).all()
    assert scale[2] == 1 and (codes[2] == 0).all()
    deq = codes.float() * scale.reshape(-1, 1, 1, 1)
    assert ((deq - w).abs() <= scale.reshape(-1, 1, 1, 1) / 2 + 1e-7).all()


def test_activation_params_cover_the_range_and_zero():
    scale, zero = activation_quant_params(-1.0, 3.0)
    assert zero == round(1.0 / scale) and abs(scale - 4 / 255) < 1e-7
    x = torch.tensor([-1.0, 0.0, 3.0])
    assert fake_quant_uint8(x, scale, zero)[1] == 0  # zero is exact
    assert activation_quant_params(0.5, 2.0)[1] == 0  # ReLU outputs: range starts at 0
    assert activation_quant_params(0.0, 0.0) == (1.0, 0)


def test_percentile_observer_ignores_outliers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    data = [torch.randn(256, 8) for _ in range(3)]
    data[0][0, 0] = 1000.0
    minmax = float(quantize_int8(model, data)[0].act_scale)
    pct = quantize_int8(model, data, Int8Config(observer="percentile", percentile=99.0))[0]
    assert float(pct.act_scale) < minmax / 10


def test_config_errors():
    with pytest.raises(CompressorError, match="observer must be one of"):
        Int8Config(observer="kl")
    with pytest.raises(CompressorError, match="calibration_batches must be >= 1"):
        Int8Config(calibration_batches=0)
    with pytest.raises(CompressorError, match="calibration data is empty"):
        quantize_int8(nn.Sequential(nn.Linear(2, 2)), [])


def int8_cnn(prune=0.0):
    from compressor.models import DigitsCNN

    model = trained_bn(DigitsCNN(width=16), (1, 8, 8))
    if prune:
        fold_masks(prune_(model, PruneConfig(sparsity=prune)))
    torch.manual_seed(1)
    calibration = [torch.randn(32, 1, 8, 8) for _ in range(4)]
    return model, quantize_int8(model, calibration, Int8Config(calibration_batches=4))


def test_int8_state_dict_round_trip():
    _, quantized = int8_cnn()
    _, fresh = int8_cnn()
    with torch.no_grad():
        for layer in (m for m in fresh.modules() if isinstance(m, Int8FakeQuant)):
            layer.act_scale.fill_(1.0)
    fresh.load_state_dict(quantized.state_dict())
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(fresh(x), quantized(x), rtol=0, atol=0)


def test_int8_fake_quant_model_is_close_to_float():
    model, quantized = int8_cnn()
    layers = [m for m in quantized.modules() if isinstance(m, Int8FakeQuant)]
    assert len(layers) == 4
    x = torch.randn(64, 1, 8, 8)
    ref, got = model(x), quantized(x)
    assert (ref - got).abs().max() < 0.05 * ref.abs().max()  # int8 noise, not a broken model
    assert (ref.argmax(1) == got.argmax(1)).float().mean() > 0.9


@pytest.mark.parametrize("prune", [0.0, 0.9])
def test_int8_exports_as_qdq_and_matches_the_fake_quant_model(tmp_path, prune):
    _, quantized = int8_cnn(prune)
    report = to_onnx(quantized, torch.randn(8, 1, 8, 8), tmp_path / "q.onnx",
                     ExportConfig(measure_latency=False))
    model = onnx.load(str(tmp_path / "q.onnx"))
    ops = [n.op_type for n in model.graph.node]
    # each layer quantizes its input and its output
    assert report.quantized_layers == 4 and ops.count("QuantizeLinear") == 8
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                 and n.name.endswith("weight_DequantizeLinear")]
    assert len(weight_dq) == 4
    assert report.max_error <= report.tolerance
    # int8 weights: a quarter of the fp32 bytes, and less again when 90% of them are zero
    weight_bytes = sum(p.numel() for n, p in quantized.named_parameters() if "weight" in n)
    assert report.bytes <= report.dense_bytes - 3 * weight_bytes + 20_000
    if prune:
        assert report.size_ratio > 6


def ort_ops(path, level="ORT_ENABLE_EXTENDED"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(path.with_name("optimized.onnx"))
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("outputs", [True, False])
def test_onnxruntime_runs_int8_kernels_only_with_quantized_outputs(tmp_path, outputs):
    torch.manual_seed(0)
    model = SequenceModel()
    quantized = quantize_int8(model, [torch.randn(8, 3, 12) for _ in range(2)],
                              Int8Config(outputs=outputs))
    to_onnx(quantized, torch.randn(2, 3, 12), tmp_path / "q.onnx",
            ExportConfig(measure_latency=False))
    ops = ort_ops(tmp_path / "q.onnx")
    fused = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat"} & set(ops)
    if outputs:
        assert len(fused) == 2 and not {"Conv", "Gemm", "MatMul"} & set(ops), ops
    else:  # the last layer (no quantized consumer) stays fp32 on weights dequantized per run
        assert len(fused) < 2 and "DequantizeLinear" in ops


def test_int8_weights_decode_to_the_fake_quant_weights(tmp_path):
    _, quantized = int8_cnn()
    to_onnx(quantized, torch.randn(2, 1, 8, 8), tmp_path / "q.onnx",
            ExportConfig(measure_latency=False, encodings=()))
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "q.onnx"))
             .graph.initializer}
    codes = {k: v for k, v in inits.items() if k.endswith("_int8")}
    assert all(v.dtype.name == "int8" for v in codes.values())
    want = [m.weight_int8.numpy() for m in quantized.modules() if isinstance(m, Int8FakeQuant)]
    # same code multisets per layer (a MatMul would hold W^T)
    assert sorted(np.sort(v.ravel()).tobytes() for v in codes.values()) == sorted(
        np.sort(w.ravel()).tobytes() for w in want)


class SequenceModel(nn.Module):
    """Conv1d, then a Linear on (N, L, C): exporters write that Linear as MatMul with W^T, so its
    QDQ weight is per-channel along axis 1."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).transpose(1, 2))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_int8_conv1d_and_matmul_weights(tmp_path, exporter):
    torch.manual_seed(0)
    model = SequenceModel()
    quantized = quantize_int8(model, [torch.randn(8, 3, 12) for _ in range(2)])
    report = to_onnx(quantized, torch.randn(2, 3, 12), tmp_path / "q.onnx",
                     ExportConfig(measure_latency=False, exporter=exporter))
    assert report.quantized_layers == 2 and report.max_error <= report.tolerance
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    axes = {n.input[0]: next(a.i for a in n.attribute if a.name == "axis")
            for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_int8")}
    assert "MatMul" in {n.op_type for n in graph.node}  # both exporters write the head so
    assert sorted(axes.values()) == [0, 1]
