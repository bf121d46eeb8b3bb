"""compressor's attention and transformer modules: torch's function and state_dicts, conversion
of torch's layers (all or nothing, masks carried), every module swap working on them, and
torch.compile / torch.export / ONNX export of the converted models."""

import copy
import itertools
import warnings

import pytest
import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.export import ExportConfig, to_onnx
from compressor.nn import SparseLinear
from compressor.nn.attention import MultiheadAttention
from compressor.nn.convert import convert_torch_layers_, plan
from compressor.nn.transformer import (
    TransformerDecoder,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from compressor.pruning import PruneConfig, fold_masks, get_masks, prune_
from compressor.pruning.selection import compressible_
from compressor.quantization import Int8FakeQuant, convert_to_pow2, quantize_int8

E, H = 16, 4


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def encoder(batch_first=True, norm_first=False, activation="gelu", layers=2):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, activation=activation,
                                       batch_first=batch_first, norm_first=norm_first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # enable_nested_tensor with norm_first
        return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(E)).eval()


@pytest.mark.parametrize("batch_first,bias,bias_kv,zero_attn,kdim,need", [
    c for c in itertools.product([False, True], [True, False], [False, True], [False, True],
                                 [None, 8], [True, False]) if sum(c[1:4]) != 3][::3])
def test_attention_computes_torchs_function(batch_first, bias, bias_kv, zero_attn, kdim, need):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, bias=bias, add_bias_kv=bias_kv, add_zero_attn=zero_attn,
                                kdim=kdim, vdim=kdim, batch_first=batch_first).eval()
    new = MultiheadAttention.from_torch(ref).eval()
    b, length, src = 3, 5, 7

    def layout(t):
        return t if batch_first else t.transpose(0, 1)

    q = layout(torch.randn(b, length, E))
    k, v = (layout(torch.randn(b, src, kdim or E)) for _ in range(2))
    pad = torch.rand(b, src) > 0.6
    pad[:, 0] = False
    bool_mask = torch.rand(b * H, length, src) > 0.8
    bool_mask[..., 0] = False
    for masks in ({}, {"attn_mask": torch.randn(length, src)}, {"key_padding_mask": pad},
                  {"attn_mask": bool_mask, "key_padding_mask": pad}):
        want = ref(q, k, v, need_weights=need, **masks)
        got = new(q, k, v, need_weights=need, **masks)
        close(got[0], want[0])
        if need:
            close(got[1], want[1])


def test_attention_causal_unbatched_and_torch_state_dict():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True).eval()
    new = MultiheadAttention(E, H, batch_first=True).eval()
    assert str(new.load_state_dict(ref.state_dict())) == "<All keys matched successfully>"
    x, causal = torch.randn(2, 6, E), nn.Transformer.generate_square_subsequent_mask(6)
    for need in (True, False):
        close(new(x, x, x, attn_mask=causal, is_causal=True, need_weights=need)[0],
              ref(x, x, x, attn_mask=causal, is_causal=True, need_weights=need)[0])
    single = torch.randn(6, E)
    for got, want in zip(new(single, single, single), ref(single, single, single), strict=True):
        close(got, want)
    with pytest.raises(CompressorError, match="is_causal=True needs attn_mask"):
        new(x, x, x, is_causal=True)


@pytest.mark.parametrize("batch_first,norm_first,training", [
    (True, False, False), (False, True, False), (True, True, True)])
def test_encoder_and_decoder_compute_torchs_function(batch_first, norm_first, training):
    torch.backends.mha.set_fastpath_enabled(False)  # torch's fast path ignores GELU(tanh)
    try:
        ref = encoder(batch_first, norm_first, nn.GELU(approximate="tanh")).train(training)
        new = TransformerEncoder.from_torch(ref)
        x = torch.randn(3, 5, E) if batch_first else torch.randn(5, 3, E)
        pad = torch.zeros(3, 5, dtype=torch.bool)
        pad[0, -2:] = True
        causal = nn.Transformer.generate_square_subsequent_mask(5)
        for kwargs in ({}, {"src_key_padding_mask": pad}, {"mask": causal, "is_causal": True}):
            close(new(x, **kwargs), ref(x, **kwargs))
        torch.manual_seed(1)
        layer = nn.TransformerDecoderLayer(E, H, 32, dropout=0.0, batch_first=batch_first,
                                           norm_first=norm_first)
        dec = nn.TransformerDecoder(layer, 2).train(training)
        new_dec = TransformerDecoder.from_torch(dec)
        tgt = torch.randn(3, 4, E) if batch_first else torch.randn(4, 3, E)
        mask = nn.Transformer.generate_square_subsequent_mask(4)
        close(new_dec(tgt, x, tgt_mask=mask, memory_key_padding_mask=pad),
              dec(tgt, x, tgt_mask=mask, memory_key_padding_mask=pad))
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def test_torch_layer_state_dict_loads_and_matches_torchs_fast_path():
    ref = nn.TransformerEncoderLayer(E, H, 32, batch_first=True).eval()
    new = TransformerEncoderLayer(E, H, 32, batch_first=True).eval()
    new.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, E)
    with torch.no_grad():
        close(new(x), ref(x))  # eval + no_grad: torch takes its fused fast path here


def test_conversion_shares_parameters_and_carries_masks():
    model = nn.Sequential(nn.Linear(8, E), encoder(), nn.Linear(E, 3))
    prune_(model, PruneConfig(sparsity=0.5))
    before = {k: v.clone() for k, v in get_masks(model).items()}
    linear1 = model[1].layers[0].linear1
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        want = model(x)
    report = compressible_(model)
    assert report == {"1": {"action": "converted", "from": "torch.nn.TransformerEncoder",
                            "to": "compressor.nn.TransformerEncoder"}}
    assert model[1].layers[0].linear1 is linear1  # untouched children are the same objects
    masks = get_masks(model)
    attn = "1.layers.0.self_attn."
    packed = before[attn + "in_proj_weight"]
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(masks[f"{attn}{name}.weight"], packed[i * E:(i + 1) * E])
    assert torch.equal(masks[attn + "out_proj.weight"], before[attn + "out_proj.weight"])
    with torch.no_grad():
        close(model(x), want)
    assert compressible_(model) == {}  # idempotent


def test_a_layer_that_cannot_be_converted_is_named_and_the_model_is_unchanged():
    def relu(t):
        return t.clamp(min=0)

    model = nn.Sequential(nn.Linear(8, E), encoder(activation="relu", layers=1),
                          nn.TransformerEncoderLayer(E, H, 32, activation=relu, batch_first=True))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m) for m in model.modules()]
    for convert in (compressible_, lambda m: quantize_int8(m, [torch.randn(4, 5, 8)])):
        with pytest.raises(CompressorError, match=r"cannot convert 2 \(TransformerEncoderLayer\)"
                                                  r".*activation.*the model is unchanged"):
            convert(model)
        assert [type(m) for m in model.modules()] == kinds
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_subclasses_and_hooks_are_left_alone_or_refused():
    class MyAttention(nn.MultiheadAttention):
        pass

    model = nn.Sequential(MyAttention(E, H))
    _, report = plan(model)
    assert report["0"]["action"] == "left as is" and "subclasses" in report["0"]["reason"]
    hooked = nn.Sequential(nn.MultiheadAttention(E, H))
    hooked[0].register_forward_hook(lambda *a: None)
    with pytest.raises(CompressorError, match="forward hooks.*the model is unchanged"):
        convert_torch_layers_(hooked)
    assert type(hooked[0]) is nn.MultiheadAttention


def test_every_module_swap_runs_on_torchs_encoder():
    """The issue's failures: sparse, power-of-two and int8 swaps on nn.TransformerEncoder."""
    base = encoder()
    x = torch.randn(2, 5, E)
    with torch.no_grad():
        pruned = fold_masks(prune_(copy.deepcopy(base), PruneConfig(sparsity=0.9)))
        want = pruned(x)
    sparse = copy.deepcopy(pruned)
    compressible_(sparse)
    for module in list(sparse.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, SparseLinear.from_dense(child))
    pow2 = convert_to_pow2(copy.deepcopy(base), 5)
    int8 = quantize_int8(base, [torch.randn(8, 5, E) for _ in range(2)])
    with torch.no_grad():
        close(sparse(x), want)
        assert torch.isfinite(pow2(x)).all() and torch.isfinite(int8(x)).all()
    assert sum(isinstance(m, Int8FakeQuant) for m in int8.modules()) == 2 * 6
    assert not any(type(m) is nn.Linear for m in pow2.modules())


def converted_models():
    torch.manual_seed(0)
    sparse = fold_masks(prune_(encoder(), PruneConfig(sparsity=0.8)))
    compressible_(sparse)
    layer = sparse.layers[0]
    layer.linear1 = SparseLinear.from_dense(layer.linear1)
    layer.self_attn.q_proj = SparseLinear.from_dense(layer.self_attn.q_proj)
    return {"sparse": sparse, "pow2": convert_to_pow2(encoder(), 5)}


@pytest.mark.parametrize("kind", ["sparse", "pow2"])
def test_compile_and_export_without_a_warm_up_call(kind):
    model = converted_models()[kind].eval()
    x = torch.randn(2, 5, E)
    exported = torch.export.export(model, (x,))  # the first call the model ever sees
    compiled = torch.compile(copy.deepcopy(model))
    with torch.no_grad():
        want = model(x)
        close(exported.module()(x), want)
        close(compiled(x), want)


def test_converted_encoder_exports_with_a_dynamic_sequence_length(tmp_path):
    model = converted_models()["pow2"]
    report = to_onnx(model, torch.randn(2, 6, E), tmp_path / "m.onnx",
                     ExportConfig(measure_latency=False, dynamic_batch=True,
                                  dynamic_dims=(1,)))
    assert report.max_error <= report.tolerance  # checked on 3 x 5 inputs too
    assert any("Pow2Linear -> Linear" in c for c in report.notes["converted"])
    assert any(e["kind"].endswith("codebook") for e in report.encodings)


def test_converted_model_saves_and_loads_as_a_model_file(tmp_path):
    from compressor.pipeline.modelfile import ModelFile, load_model, save_model

    kwargs = {"feature_shape": (8,), "vocab_size": 30, "dim": E, "depth": 1, "heads": H,
              "mlp_dim": 32, "num_classes": 3}
    from compressor.models import build_model

    model = build_model("bert", **kwargs).eval()
    prune_(model, PruneConfig(sparsity=0.5))
    compressible_(model)
    path = save_model(tmp_path / "m.pt", model, ModelFile("bert", kwargs))
    loaded, _ = load_model(path)
    tokens = torch.randint(0, 30, (2, 8))
    assert isinstance(loaded.layers[0].self_attn, MultiheadAttention)
    assert sorted(get_masks(loaded)) == sorted(get_masks(model))
    with torch.no_grad():
        close(loaded.eval()(tokens), model(tokens))


def test_int8_quantize_in_place_on_a_torch_encoder_root():
    """The caller's object is the quantized model, even when the root itself is a torch layer
    that conversion replaces (its forward must be the twin's), and no BatchNorm means no trace
    and no warning."""
    from compressor.data.datasets import Dataset
    from compressor.quantization import Int8Config, quantize_
    from compressor.train import batches

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(40, 5, 16)
    data = Dataset("seq", x, torch.zeros(40, dtype=torch.long), x[:8],
                   torch.zeros(8, dtype=torch.long))
    want = quantize_int8(copy.deepcopy(model), batches(data, 256, seed=0), Int8Config())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quantize_(model, Int8Config(), data) is model
    assert type(model) is type(want) and type(model) is not nn.TransformerEncoder
    with torch.no_grad():
        torch.testing.assert_close(model(x[:3]), want(x[:3]))


@pytest.mark.parametrize("arch", ["vit", "bert", "gpt"])
def test_transformers_trace_for_fusion_with_attention_as_one_leaf(arch):
    """sparse conversion and BatchNorm folding find their patterns in a transformer's trace
    (attention's forward branches on masks: it is one leaf), instead of giving up with a
    warning."""
    from benchmarks.architectures import build
    from compressor.graph.patterns import find_patterns

    model = build(arch, "test")
    compressible_(model)
    patterns = find_patterns(model)  # raises TraceError when fx cannot trace
    convs = [u.conv for u in patterns.units]
    assert any("proj" in c or "fc" in c or "linear" in c or "mlp" in c for c in convs), convs
