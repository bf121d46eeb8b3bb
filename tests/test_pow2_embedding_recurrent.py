"""Pow2Embedding, Pow2LSTM, Pow2GRU, Pow2RNN: embedding tables and torch RNN weights kept as
packed power-of-two codes. Each equals the float module holding the decoded weights, saves only
codes, reloads (also through a model file), converts inside a language model, and exports."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import CompressorError
from compressor.formats.pow2_levels import pow2_levels
from compressor.models import build_model
from compressor.nn import Pow2Embedding, Pow2GRU, Pow2LSTM, Pow2RNN
from compressor.pipeline.modelfile import ModelFile, load_model, save_model
from compressor.quantization import convert_to_pow2
from compressor.quantization.convert import choose_modes

LSTMS = [dict(num_layers=1), dict(num_layers=2, dropout=0.0),
         dict(num_layers=1, bidirectional=True, batch_first=True),
         dict(num_layers=2, proj_size=3), dict(num_layers=1, bias=False)]


def _float_twin(packed: Pow2LSTM, **kwargs) -> nn.LSTM:
    twin = nn.LSTM(packed.input_size, packed.hidden_size, **kwargs)
    with torch.no_grad():
        for name, param in twin.named_parameters():
            param.copy_(getattr(packed, name))
    return twin


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
@pytest.mark.parametrize("kwargs", LSTMS, ids=str)
def test_pow2_lstm_equals_the_lstm_on_its_decoded_weights(kwargs, bits):
    torch.manual_seed(bits)
    lstm = nn.LSTM(5, 7, **kwargs)
    packed = Pow2LSTM.from_float(lstm, bits)
    assert isinstance(packed, nn.LSTM)  # code written for nn.LSTM keeps working
    assert not any(p.requires_grad for p in packed.parameters())  # inference only
    twin = _float_twin(packed, **kwargs)
    for name in packed.weight_names():  # every weight is on its own INQ levels
        levels = pow2_levels(packed.n1[name], bits).float()
        magnitudes = getattr(packed, name).abs().unique()
        assert torch.isin(magnitudes, levels).all(), name
        assert (getattr(packed, name) - getattr(lstm, name)).abs().max() < getattr(
            lstm, name).abs().max()  # quantized from this weight, not another
    batch_first = kwargs.get("batch_first", False)
    x = torch.randn(3, 4, 5) if batch_first else torch.randn(4, 3, 5)
    for inp in (x, x.transpose(0, 1).contiguous().transpose(0, 1), x[:, :1]):
        got, (h, c) = packed(inp)
        want, (h2, c2) = twin(inp)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close((h, c), (h2, c2))
    reloaded = Pow2LSTM(5, 7, bits=bits, **kwargs)
    reloaded.load_state_dict(packed.state_dict())
    torch.testing.assert_close(reloaded(x)[0], packed(x)[0])
    weights = [k for k in packed.state_dict() if k.startswith("weight_") and
               not k.endswith(("_codes", "_nonzero", "_n1"))]
    assert weights == []  # only codes are saved
    weight_bytes = sum(getattr(lstm, n).numel() * 4 for n in packed.weight_names())
    rest = _state_bytes(lstm) - weight_bytes  # biases, and the ints bits / n1
    assert _state_bytes(packed) - rest <= weight_bytes / 8 * (1.25 if bits == 5 else 1) + 8 * (
        1 + len(packed.weight_names())) + 64 * len(packed.weight_names())  # padded rows


def test_pow2_lstm_load_checks_bits_and_from_float_its_input():
    packed = Pow2LSTM.from_float(nn.LSTM(4, 6), 4)
    other = Pow2LSTM(4, 6, bits=5)
    with pytest.raises(RuntimeError, match="bits is 4 in the checkpoint but the module has "
                                           "bits=5"):
        other.load_state_dict(packed.state_dict())
    with pytest.raises(CompressorError, match="Pow2LSTM.from_float needs an nn.LSTM, got GRU"):
        Pow2LSTM.from_float(nn.GRU(4, 6), 4)
    with pytest.raises(CompressorError, match="bits"):
        Pow2LSTM.from_float(nn.LSTM(4, 6), 7)


@pytest.mark.parametrize("bits", [2, 4, 5])
def test_pow2_embedding_modes_equal_the_table_lookup(bits):
    torch.manual_seed(0)
    table = nn.Embedding(13, 6, padding_idx=2)
    packed = Pow2Embedding.from_float(table, bits)
    weight = packed.dequantized_weight()
    assert torch.isin(weight.abs().unique(), pow2_levels(packed.n1, bits).float()).all()
    index = torch.tensor([[0, 2, 12], [5, 5, 1]])
    cases = [index, index.t(), index[:, :1], torch.tensor([7]), index.int(),
             torch.zeros(0, dtype=torch.long)]
    for mode in ("decoded", "codes"):
        packed.mode = mode
        for idx in cases:
            torch.testing.assert_close(packed(idx), F.embedding(idx.long(), weight))
    export = packed.export_module()
    assert type(export) is nn.Embedding and export.padding_idx == 2
    torch.testing.assert_close(export(index), F.embedding(index, weight))
    reloaded = Pow2Embedding(13, 6, bits, padding_idx=2)
    reloaded.load_state_dict(packed.state_dict())
    torch.testing.assert_close(reloaded(index), packed(index))


def test_pow2_embedding_errors():
    packed = Pow2Embedding.from_float(nn.Embedding(5, 3), 4)
    with pytest.raises(CompressorError, match="expects integer indices, got torch.float32"):
        packed(torch.zeros(2))
    with pytest.raises(CompressorError, match="Pow2Embedding.mode must be 'decoded' or 'codes'"):
        packed.mode = "codes_int8"
    with pytest.raises(CompressorError, match="max_norm rewrites its table"):
        Pow2Embedding.from_float(nn.Embedding(5, 3, max_norm=1.0), 4)
    with pytest.raises(IndexError):
        packed(torch.tensor([5]))  # past the table: torch's own lookup error, never garbage
    packed.mode = "codes"
    with pytest.raises(IndexError):
        packed(torch.tensor([5]))


def test_lstm_language_model_packs_whole_and_round_trips_a_model_file(tmp_path):
    torch.manual_seed(0)
    kwargs = {"num_classes": 50, "feature_shape": (9,), "embedding": 16, "hidden": 24}
    model = build_model("lstm_lm", **kwargs).eval()
    tokens = torch.randint(0, 50, (2, 9))
    dense_bytes = _state_bytes(model)
    convert_to_pow2(model, 4)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Pow2Embedding", "Pow2LSTM", "Pow2Linear"} <= kinds
    assert not kinds & {"Embedding", "LSTM", "Linear"}
    assert _state_bytes(model) * 3 < dense_bytes
    report = choose_modes(model, (tokens,))
    assert all(r["mode"] in ("decoded", "codes") for r in report.values())
    want = model(tokens)
    path = save_model(tmp_path / "q.pt", model, ModelFile("lstm_lm", kwargs))
    loaded, _ = load_model(path)
    torch.testing.assert_close(loaded.eval()(tokens), want)
    exported = torch.export.export(loaded, (tokens,))  # no warm-up call needed
    torch.testing.assert_close(exported.module()(tokens), want)
    lstm = next(m for m in loaded.modules() if isinstance(m, Pow2LSTM))
    lstm.pow2_mode = "codes"  # the step loop on the codes compiles too
    torch.testing.assert_close(torch.compile(loaded)(tokens), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [k for k in LSTMS if not k.get("proj_size")], ids=str)
def test_pow2_lstm_codes_modes_equal_the_decoded_lstm(kwargs):
    torch.manual_seed(1)
    packed = Pow2LSTM.from_float(nn.LSTM(5, 7, **kwargs), 4).eval()
    batch_first = kwargs.get("batch_first", False)
    dirs = 2 if kwargs.get("bidirectional") else 1
    x = torch.randn(3, 4, 5)
    hx = (torch.randn(kwargs["num_layers"] * dirs, 3 if batch_first else 4, 7),
          torch.randn(kwargs["num_layers"] * dirs, 3 if batch_first else 4, 7))
    for inp, state in ((x, None), (x, hx), (x.transpose(0, 1).contiguous().transpose(0, 1), hx),
                       (x[:1] if not batch_first else x[:, :1], None)):
        want = packed.run(inp, "decoded", state)
        for mode, tol in (("codes", 1e-5), ("codes_int8", 2e-2)):
            packed.pow2_mode = mode
            got = packed(inp, state)
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)
        packed.pow2_mode = "decoded"


def test_pow2_lstm_mode_errors_and_the_chosen_mode_survives_a_model_file(tmp_path):
    projected = Pow2LSTM.from_float(nn.LSTM(4, 6, proj_size=2), 4)
    with pytest.raises(CompressorError, match="no projection"):
        projected.pow2_mode = "codes"
    assert projected.candidate_modes(True) == ["decoded"]
    five = Pow2LSTM.from_float(nn.LSTM(4, 6), 5)
    with pytest.raises(CompressorError, match="'codes_int8' needs bits <= 4"):
        five.pow2_mode = "codes_int8"
    with pytest.raises(CompressorError, match="pow2_mode must be one of"):
        five.pow2_mode = "fast"
    five.pow2_mode = "codes"
    with pytest.raises(CompressorError, match="input.size\\(-1\\) must be 4, got 3"):
        five(torch.randn(2, 1, 3))
    kwargs = {"num_classes": 40, "feature_shape": (6,), "embedding": 8, "hidden": 12}
    model = convert_to_pow2(build_model("lstm_lm", **kwargs).eval(), 4)
    lstm = next(m for m in model.modules() if isinstance(m, Pow2LSTM))
    lstm.pow2_mode = "codes"
    tokens = torch.randint(0, 40, (2, 6))
    loaded, _ = load_model(save_model(tmp_path / "m.pt", model, ModelFile("lstm_lm", kwargs)))
    again = next(m for m in loaded.modules() if isinstance(m, Pow2LSTM))
    assert again.pow2_mode == "codes"
    torch.testing.assert_close(loaded.eval()(tokens), model(tokens))


@pytest.mark.parametrize("cls, twin, kwargs", [
    (Pow2GRU, nn.GRU, dict(num_layers=2)), (Pow2GRU, nn.GRU, dict(bidirectional=True,
                                                                  batch_first=True)),
    (Pow2RNN, nn.RNN, dict(nonlinearity="relu")), (Pow2RNN, nn.RNN, dict(num_layers=2,
                                                                         bias=False))], ids=str)
def test_pow2_gru_and_rnn_equal_their_float_twin_and_reload(cls, twin, kwargs):
    torch.manual_seed(2)
    rnn = twin(5, 7, **kwargs).eval()
    packed = cls.from_float(rnn, 4)
    assert isinstance(packed, twin) and packed.training is False
    plain = packed.export_module()
    assert type(plain) is twin
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(packed(x), plain(x))
    for name in packed.weight_names():
        assert torch.isin(getattr(packed, name).abs().unique(),
                          pow2_levels(packed.n1[name], 4).float()).all()
    again = cls(5, 7, bits=4, **kwargs)
    again.load_state_dict(packed.state_dict())
    torch.testing.assert_close(again.eval()(x), packed(x))
    assert not [k for k in packed.state_dict() if k.startswith("weight_") and k.endswith(
        ("l0", "l1", "reverse"))]  # no float weight is saved
    with pytest.raises(CompressorError, match=f"{cls.__name__}.from_float needs an nn."):
        cls.from_float(nn.LSTM(5, 7), 4)


def test_convert_packs_gru_models_whole():
    model = nn.Sequential(nn.Embedding(30, 8), nn.GRU(8, 16, batch_first=True))
    convert_to_pow2(model, 5)
    assert [type(m).__name__ for m in model] == ["Pow2Embedding", "Pow2GRU"]


def test_structured_pruning_names_a_packed_lstm_and_leaves_it_whole():
    from compressor.structured import StructuredConfig, prune_channels_, structured_result

    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8))
    rnn = Pow2LSTM.from_float(nn.LSTM(8, 10, batch_first=True), 4)
    lstm_model = _HeadThenLSTM(head, rnn).eval()
    x = torch.randn(2, 5, 6)
    want = lstm_model(x)
    prune_channels_(lstm_model, StructuredConfig(ratio=0.5), x)
    layers = structured_result(lstm_model)["layers"]
    assert "packed power-of-two weights" in layers["rnn"]["reason"]
    assert lstm_model.rnn.hidden_size == 10 and lstm_model.head[2].out_features == 8
    assert lstm_model.head[0].out_features == 6  # the free hidden layer (12) shrinks
    assert lstm_model(x).shape == want.shape


class _HeadThenLSTM(nn.Module):
    def __init__(self, head, rnn):
        super().__init__()
        self.head, self.rnn = head, rnn

    def forward(self, x):
        return self.rnn(self.head(x))[0]
