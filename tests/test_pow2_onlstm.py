"""ON-LSTM with packed power-of-two weights (ONLSTM.pack_pow2_, convert_to_pow2): every recurrent
mode against the float ON-LSTM holding the same (power-of-two) weights."""

import copy
import io

import pytest
import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.formats.pow2_levels import pow2_quantize
from compressor.nn import ONLSTM, Pow2Linear
from compressor.quantization import convert_to_pow2
from compressor.quantization.convert import choose_modes, pow2_modes, set_pow2_modes


def _quantized_onlstm(bits=4, **kw):
    torch.manual_seed(0)
    rnn = ONLSTM(12, 24, num_layers=2, chunk_size=4, **kw).eval()
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("weight"):
                p.copy_(pow2_quantize(p, bits))
    return rnn


@pytest.mark.parametrize("mode", ["decoded", "codes", "codes_int8"])
@pytest.mark.parametrize("dropconnect,batch_first", [(0.0, False), (0.4, True)])
def test_packed_matches_the_float_onlstm(mode, dropconnect, batch_first):
    rnn = _quantized_onlstm(dropconnect=dropconnect, batch_first=batch_first)
    packed = copy.deepcopy(rnn).pack_pow2_(4)
    assert packed.packed_bits == 4 and not any(n.startswith("weight")
                                               for n, _ in packed.named_parameters())
    set_pow2_modes(packed, {f"hh_l{k}": mode for k in range(2)})
    x = torch.randn(3, 5, 12) if batch_first else torch.randn(5, 3, 12)  # batch 3, 5 steps
    hx = [(torch.randn(3, 24), torch.randn(3, 24)) for _ in range(2)]
    with torch.no_grad():
        (out, final, dist), (want, want_final, want_dist) = packed(x, hx), rnn(x, hx)
    tol = 2e-3 if mode == "codes_int8" else 1e-5  # int8-rounded recurrent inputs
    torch.testing.assert_close(out, want, atol=tol, rtol=tol)
    torch.testing.assert_close(final[1][1], want_final[1][1], atol=tol, rtol=tol)
    torch.testing.assert_close(dist[0], want_dist[0], atol=tol, rtol=tol)


def test_state_dict_round_trip_and_errors():
    packed = _quantized_onlstm(dropconnect=0.2).pack_pow2_(5)
    assert isinstance(packed.hh_l1, Pow2Linear)
    buf = io.BytesIO()
    torch.save(packed.state_dict(), buf)
    buf.seek(0)
    fresh = ONLSTM(12, 24, num_layers=2, chunk_size=4, dropconnect=0.2).eval().pack_pow2_(5)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(4, 2, 12)
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], packed(x)[0])
    with pytest.raises(CompressorError, match="already packed"):
        packed.pack_pow2_(4)
    with pytest.raises(CompressorError, match="packed weights are for inference"):
        packed.train()(x)


class _LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 12)
        self.rnn = ONLSTM(12, 24, num_layers=2, chunk_size=4)
        self.head = nn.Linear(24, 30)

    def forward(self, tokens):
        return self.head(self.rnn(self.emb(tokens))[0])


def test_convert_packs_an_lm_and_times_its_recurrence():
    torch.manual_seed(0)
    lm = _LM().eval()
    tokens = torch.randint(0, 30, (6, 2))
    packed = convert_to_pow2(copy.deepcopy(lm), 4)
    assert packed.rnn.packed_bits == 4 and isinstance(packed.head, Pow2Linear)
    assert set(pow2_modes(packed)) == {"rnn.ih_l0", "rnn.hh_l0", "rnn.ih_l1", "rnn.hh_l1",
                                       "head", "emb"}  # the embedding table is packed too
    report = choose_modes(packed, tokens, allow_int8_activations=True)
    assert set(report["rnn.hh"]) == {"decoded", "codes", "codes_int8", "mode"}
    assert pow2_modes(packed)["rnn.hh_l1"] == report["rnn.hh"]["mode"]
    with torch.no_grad():
        assert packed(tokens).shape == lm(tokens).shape == (6, 2, 30)
