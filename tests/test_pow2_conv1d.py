"""Pow2Conv1d: packed power-of-two Conv1d, against F.conv1d with the dequantized weight, through
convert_to_pow2 and through ONNX export."""

import io

import pytest
import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.nn import Pow2Conv1d
from compressor.quantization import convert_to_pow2, pow2_quantize


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
@pytest.mark.parametrize("groups,stride,padding,dilation,kernel",
                         [(1, 1, 0, 1, 3), (2, 2, 1, 1, 5), (1, 1, 2, 2, 3), (3, 1, 0, 1, 1)])
def test_matches_conv1d_with_the_dequantized_weight(device, bits, groups, stride, padding,
                                                    dilation, kernel):
    conv = nn.Conv1d(6, 12, kernel, stride, padding, dilation, groups).to(device)
    mod = Pow2Conv1d.from_float(conv, bits)
    w = mod.dequantized_weight()
    assert w.shape == conv.weight.shape
    assert torch.equal(w, pow2_quantize(conv.weight.detach().reshape(12, -1), bits).view_as(w))
    assert (mod.kernel_size, mod.stride, mod.padding, mod.dilation) == (
        conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    x = torch.randn(3, 6, 17, device=device)
    x_strided = torch.randn(3, 17, 6, device=device).transpose(1, 2)  # non-contiguous
    for inp in (x, x_strided, x[:1, :, :kernel * dilation]):
        want = nn.functional.conv1d(inp, w, mod.bias, stride, padding, dilation, groups)
        torch.testing.assert_close(mod(inp), want, atol=1e-4, rtol=1e-5)


def test_no_bias_and_state_dict_round_trip():
    mod = Pow2Conv1d.from_float(nn.Conv1d(4, 5, 3, bias=False), 4)
    assert mod.bias is None
    buf = io.BytesIO()
    torch.save(mod.state_dict(), buf)
    buf.seek(0)
    fresh = Pow2Conv1d(4, 5, 3, bits=4, bias=False)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 4, 10)
    assert torch.equal(fresh(x), mod(x))


def test_errors_name_the_problem():
    with pytest.raises(CompressorError, match="needs an nn.Conv1d"):
        Pow2Conv1d.from_float(nn.Conv2d(2, 2, 3), 4)
    with pytest.raises(CompressorError, match="zero padding"):
        Pow2Conv1d.from_float(nn.Conv1d(2, 2, 3, padding="same"), 4)
    with pytest.raises(CompressorError, match="divisible by groups"):
        Pow2Conv1d(3, 4, 3, bits=4, groups=2)
    with pytest.raises(CompressorError, match=r"expects \(N, 2, L\)"):
        Pow2Conv1d(2, 2, 3, bits=4)(torch.randn(1, 3, 8))


def test_convert_to_pow2_packs_conv1d_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 12, 3))
    x = torch.randn(5, 1, 12)
    with torch.no_grad():
        for p in (model[0].weight, model[3].weight):
            p.copy_(pow2_quantize(p.reshape(p.shape[0], -1), 5).view_as(p))
        want = model(x)
    packed = convert_to_pow2(model, 5)
    assert isinstance(packed[0], Pow2Conv1d)
    assert not any(isinstance(m, nn.Conv1d) for m in packed.modules())
    torch.testing.assert_close(packed(x), want, atol=1e-5, rtol=1e-5)


def test_exports_to_onnx_and_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from compressor.export import to_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(16, 64, 5, padding=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64 * 10, 32))
    packed = convert_to_pow2(model, 4).eval()
    x = torch.randn(1, 16, 10)
    report = to_onnx(packed, (x,), tmp_path / "conv1d.onnx")
    assert report.max_error < 1e-4
    assert "0: Pow2Conv1d -> Conv1d" in report.notes["converted"]
    assert report.size_ratio > 3  # 16 levels: stored as codes, not float32
