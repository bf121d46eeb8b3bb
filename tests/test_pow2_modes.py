"""The execution modes of the power-of-two modules ("decoded", "codes", "codes_int8"): every mode
equals the float layer on the decoded weights, the decoded buffer follows the codes, the modes
are chosen by measurement, and converted models compile and export without a warm-up call."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import CompressorError
from compressor.nn import Pow2Conv1d, Pow2Conv2d, Pow2Linear
from compressor.ops import pow2_decode, reference
from compressor.quantization import convert_to_pow2
from compressor.quantization.convert import choose_modes, pow2_modes, set_pow2_modes
from tests.test_pow2 import packed_layer

CONV2D = [  # (in, out, kernel, stride, padding, dilation, groups)
    (6, 8, 3, 1, 0, 1, 1), (6, 8, 3, 2, 1, 1, 2), (8, 8, 3, 1, 1, 1, 8), (6, 12, 3, 1, 2, 2, 3),
    (5, 7, 1, 1, 0, 1, 1), (4, 4, (1, 3), (2, 1), (0, 1), 1, 4)]


def _same(got, want):
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("mode", ["decoded", "codes"])
@pytest.mark.parametrize("spec", CONV2D, ids=str)
def test_conv2d_modes_equal_the_float_conv(spec, mode):
    cin, cout, k, s, p, d, g = spec
    torch.manual_seed(sum(map(hash, map(str, spec))) % 1000)
    conv = nn.Conv2d(cin, cout, k, s, p, d, g)
    mod = Pow2Conv2d.from_float(conv, 5)
    mod.mode = mode
    w = mod.dequantized_weight()
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    one = torch.randn(1, cin, dh * (kh - 1) + 1, dw * (kw - 1) + 1)  # a 1 x 1 output (no pad)
    for x in (torch.randn(2, cin, 9, 11), torch.randn(1, 11, 9, cin).permute(0, 3, 2, 1), one):
        _same(mod(x), F.conv2d(x, w, mod.bias, conv.stride, conv.padding, conv.dilation, g))
    assert (mod.decoded.numel() > 0) == (mode == "decoded")


@pytest.mark.parametrize("mode", ["decoded", "codes"])
@pytest.mark.parametrize("groups,stride,padding,dilation", [(1, 2, 1, 1), (4, 1, 2, 2)])
def test_conv1d_modes_equal_the_float_conv(mode, groups, stride, padding, dilation):
    conv = nn.Conv1d(8, 12, 3, stride, padding, dilation, groups)
    mod = Pow2Conv1d.from_float(conv, 4)
    mod.mode = mode
    x = torch.randn(3, 15, 8).transpose(1, 2)
    _same(mod(x), F.conv1d(x, mod.dequantized_weight(), mod.bias, stride, padding, dilation,
                           groups))


@pytest.mark.parametrize("mode", ["decoded", "codes", "codes_int8"])
def test_linear_modes(mode):
    lin = nn.Linear(37, 70)
    mod = Pow2Linear.from_float(lin, 4)
    mod.mode = mode
    w = mod.dequantized_weight()
    x = torch.randn(3, 4, 37)
    want = F.linear(x, w, mod.bias)
    if mode == "codes_int8":  # int8 activations: the twin's result, near the float one
        twin = reference.pow2_linear_int8(x.reshape(12, 37), mod.codes, mod.nonzero, mod.bias,
                                          37, 4, mod.n1).reshape(3, 4, 70)
        _same(mod(x), twin)
        assert (mod(x) - want).abs().max() < 0.05 * want.abs().max()
    else:
        _same(mod(x), want)
    torch.testing.assert_close(mod.weight, w)


@pytest.mark.parametrize("mode", ["decoded", "codes", "codes_int8"])
def test_zero_in_features_behave_like_nn_linear(mode):
    lin = nn.Linear(0, 5)
    mod = Pow2Linear.from_float(lin, 4)
    mod.mode = mode
    x = torch.randn(3, 0)
    torch.testing.assert_close(mod(x), lin(x).detach())
    assert mod(torch.randn(2, 3, 0)).shape == (2, 3, 5)


def test_mode_errors():
    mod = Pow2Linear(8, 4, bits=5)
    with pytest.raises(CompressorError, match="mode must be one of"):
        mod.mode = "fast"
    with pytest.raises(CompressorError, match="'codes_int8' needs bits <= 4"):
        mod.mode = "codes_int8"
    with pytest.raises(CompressorError, match="groups == 1"):
        Pow2Conv2d(4, 4, 3, bits=4, groups=2).mode = "codes_int8"


def test_decoded_buffer_is_not_saved_and_follows_the_codes():
    mod = Pow2Conv2d.from_float(nn.Conv2d(3, 4, 3, padding=1), 4)
    state = mod.state_dict()
    assert set(state) == {"codes", "nonzero", "bias", "n1", "bits"}
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = Pow2Conv2d(3, 4, 3, bits=4, padding=1)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(fresh.decoded, mod.dequantized_weight())  # rebuilt on load
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        fresh.codes[0].zero_()  # in place: the next eager call decodes again
    out = fresh(x)
    torch.testing.assert_close(out[0, 0], torch.full_like(out[0, 0], float(fresh.bias[0])))
    assert torch.equal(fresh.decoded, pow2_decode(fresh.codes, fresh.nonzero, 27, 4,
                                                  fresh.n1).view(4, 3, 3, 3))


def test_pow2_decode_matches_the_format_oracle():
    for bits in (2, 4, 5):
        w, codes, nonzero, n1 = packed_layer(9, 77, bits)
        assert torch.equal(pow2_decode(codes, nonzero, 77, bits, n1), w)


def _cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 2, 2, groups=4),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_convert_chooses_modes_by_measurement_and_they_round_trip():
    torch.manual_seed(0)
    model = _cnn().eval()
    x = torch.randn(2, 3, 12, 12)
    convert_to_pow2(model, 4)
    assert set(pow2_modes(model).values()) == {"decoded"}
    with torch.no_grad():
        want = model(x)
    report = choose_modes(model, (x,), allow_int8_activations=True)
    assert set(report) == {"0", "2", "3", "5", "8"}
    for name, entry in report.items():
        times = {k: v for k, v in entry.items() if k != "mode"}
        assert entry["mode"] in times and all(t > 0 for t in times.values())
        assert ("codes" in times) == (name not in ("2", "5"))  # grouped: no kernel on codes
        assert pow2_modes(model)[name] == entry["mode"]
    fresh = convert_to_pow2(_cnn().eval(), 4)
    fresh.load_state_dict(model.state_dict())
    set_pow2_modes(fresh, pow2_modes(model))
    assert pow2_modes(fresh) == pow2_modes(model)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), want, atol=0.05, rtol=0.05)
    with pytest.raises(CompressorError, match="'1' is not a power-of-two layer"):
        set_pow2_modes(fresh, {"1": "codes"})


def test_failed_conversion_leaves_the_model_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(1, 2, 3, padding="same"))
    with pytest.raises(CompressorError, match="layer '1' cannot be packed.*model is unchanged"):
        convert_to_pow2(model, 4, example_inputs=torch.randn(1, 4))
    assert type(model[0]) is nn.Linear and type(model[1]) is nn.Conv1d


@pytest.mark.parametrize("mode", ["decoded", "codes"])
def test_export_without_warm_up(mode):
    torch.manual_seed(1)
    model = convert_to_pow2(_cnn().eval(), 5)
    set_pow2_modes(model, {name: mode for name in pow2_modes(model)})
    x = torch.randn(2, 3, 12, 12)
    exported = torch.export.export(model, (x,))  # the first call of the model
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_compile_without_warm_up():
    torch.manual_seed(2)
    model = convert_to_pow2(_cnn().eval(), 4)
    set_pow2_modes(model, {"0": "codes", "2": "codes", "3": "decoded", "5": "decoded",
                           "8": "codes_int8"})
    x = torch.randn(2, 3, 12, 12)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        got = compiled(x)  # the first call of the model
        torch.testing.assert_close(got, model(x))
