"""compressor.nn.ONLSTM: the fused path equals the plain-PyTorch path in outputs, states, distances
and every gradient; parameters behave like nn.LSTM's for pruning and INQ; clear errors."""

import pytest
import torch
import torch.nn.utils.prune
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.errors import CompressorError
from compressor.nn import ONLSTM
from tests.conftest import require_kernel


def _run(model, x, hx, fused, seed=0):
    """Forward + backward of a loss touching every output; returns tensors to compare."""
    model.use_fused_kernels = fused
    torch.manual_seed(seed)  # same dropout / dropconnect masks on both paths
    out, states, (d_f, d_i) = model(x, hx)
    loss = out.square().sum() + d_f.sum() + 0.5 * d_i.square().sum()
    loss = loss + sum((h * 1.5).sum() + c.square().sum() for h, c in states)
    leaves = [x, *(t for pair in hx for t in pair)] if hx is not None else [x]
    grads = torch.autograd.grad(loss, [*leaves, *model.parameters()])
    return [out, d_f, d_i, *(t for pair in states for t in pair), *grads]


def _assert_fused_equals_reference(model, x, hx=None, tol=1e-5):
    got, want = _run(model, x, hx, True), _run(model, x, hx, False)
    names = ["output", "d_f", "d_i"] + ["state"] * 2 * model.num_layers
    names += ["grad"] * (len(got) - len(names))
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")  # noqa: B023


def _hx(layers, batch, hidden, device):
    return [tuple(torch.randn(batch, hidden, device=device, requires_grad=True) for _ in range(2))
            for _ in range(layers)]


@pytest.mark.parametrize("input_size,hidden,chunk,layers,steps,batch", [
    (5, 7, 1, 1, 4, 3),     # odd hidden, chunk 1
    (5, 7, 7, 2, 3, 2),     # chunk == hidden
    (9, 30, 10, 3, 5, 4),   # three layers
    (4, 12, 3, 1, 1, 1),    # sequence length 1, batch 1
    (3, 66, 2, 2, 3, 2),    # more masters (33) than a warp
])
def test_fused_equals_reference(device, input_size, hidden, chunk, layers, steps, batch):
    require_kernel("onlstm_sequence", device)
    torch.manual_seed(1)
    model = ONLSTM(input_size, hidden, layers, chunk_size=chunk).to(device)
    x = torch.randn(steps, batch, input_size, device=device, requires_grad=True)
    _assert_fused_equals_reference(model, x)
    _assert_fused_equals_reference(model, x, _hx(layers, batch, hidden, device))


def test_batch_first_noncontiguous_and_dropouts(device):
    require_kernel("onlstm_sequence", device)
    torch.manual_seed(2)
    model = ONLSTM(6, 20, 2, chunk_size=5, dropconnect=0.3, dropout=0.25, batch_first=True)
    model = model.to(device)
    x = torch.randn(6, 7, 3, device=device).permute(2, 1, 0).requires_grad_()  # (B=3, T=7, 6)
    assert not x.is_contiguous()
    _assert_fused_equals_reference(model, x, _hx(2, 3, 20, device))
    out, states, (d_f, d_i) = model(x)
    assert out.shape == (3, 7, 20) and d_f.shape == d_i.shape == (2, 3, 7)
    model.eval()
    _assert_fused_equals_reference(model, x)


def test_matches_batch_first_layout(device):
    require_kernel("onlstm_sequence", device)
    torch.manual_seed(3)
    seq_first = ONLSTM(4, 8, 2, chunk_size=4).to(device)
    batch_first = ONLSTM(4, 8, 2, chunk_size=4, batch_first=True).to(device)
    batch_first.load_state_dict(seq_first.state_dict())
    x = torch.randn(5, 3, 4, device=device)
    a, sa, (fa, ia) = seq_first(x)
    b, sb, (fb, ib) = batch_first(x.transpose(0, 1))
    torch.testing.assert_close(a, b.transpose(0, 1))
    torch.testing.assert_close(fa, fb.transpose(1, 2))
    torch.testing.assert_close(sa[1][1], sb[1][1])


def test_distances_are_in_unit_interval_and_states_chain():
    torch.manual_seed(4)
    model = ONLSTM(3, 10, 1, chunk_size=2)
    x = torch.randn(8, 2, 3)
    out, [(h, c)], (d_f, d_i) = model(x)
    assert ((d_f >= 0) & (d_f <= 1) & (d_i >= 0) & (d_i <= 1)).all()
    torch.testing.assert_close(h, out[-1])
    first, states, _ = model(x[:5])
    rest, _, _ = model(x[5:], states)  # carrying the state equals one long run
    torch.testing.assert_close(torch.cat([first, rest]), out)


def test_parameters_are_named_like_lstm():
    model = ONLSTM(5, 12, 2, chunk_size=4)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    width = 4 * 12 + 2 * 3
    assert shapes == {"weight_ih_l0": (width, 5), "weight_hh_l0": (width, 12),
                      "bias_ih_l0": (width,), "bias_hh_l0": (width,),
                      "weight_ih_l1": (width, 12), "weight_hh_l1": (width, 12),
                      "bias_ih_l1": (width,), "bias_hh_l1": (width,)}


@pytest.mark.parametrize("fused", [True, False])
def test_pruning_reparametrisation_and_inplace_rewrites_take_effect(fused):
    torch.manual_seed(5)
    model = ONLSTM(4, 8, 1, chunk_size=2)
    model.use_fused_kernels = fused
    x = torch.randn(3, 2, 4)
    before, _, _ = model(x)
    torch.nn.utils.prune.l1_unstructured(model, "weight_hh_l0", amount=0.5)
    assert hasattr(model, "weight_hh_l0_mask")
    pruned, _, _ = model(x)
    assert not torch.allclose(before, pruned)
    pruned.sum().backward()
    grad = model.weight_hh_l0_orig.grad
    assert (grad[model.weight_hh_l0_mask == 0] == 0).all()
    with torch.no_grad():
        model.weight_ih_l0.copy_(torch.sign(model.weight_ih_l0) * 0.25)  # an INQ-style rewrite
    assert not torch.allclose(pruned, model(x)[0])


def test_eval_dropconnect_scales_weights():
    torch.manual_seed(6)
    model = ONLSTM(3, 6, 1, chunk_size=3, dropconnect=0.5).eval()
    plain = ONLSTM(3, 6, 1, chunk_size=3).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.mul_(0.5)
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(model(x)[0], plain(x)[0])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(CompressorError, match="hidden size 10 must be a positive multiple of "
                                              "chunk_size 3"):
        ONLSTM(4, 10, chunk_size=3)
    with pytest.raises(CompressorError, match="dropconnect must be in"):
        ONLSTM(4, 10, chunk_size=5, dropconnect=1.0)
    with pytest.raises(CompressorError, match="num_layers must be a positive int"):
        ONLSTM(4, 10, 0, chunk_size=5)
    model = ONLSTM(4, 10, 2, chunk_size=5)
    with pytest.raises(CompressorError, match=r"input must have 4 features \(input_size\)"):
        model(torch.randn(3, 2, 5))
    with pytest.raises(CompressorError, match="input must be a 3-dim tensor"):
        model(torch.randn(3, 4))
    with pytest.raises(CompressorError, match="hx must hold 2"):
        model(torch.randn(3, 2, 4), [(torch.zeros(2, 10), torch.zeros(2, 10))])
    bad = [(torch.zeros(2, 10), torch.zeros(2, 10)), (torch.zeros(2, 10), torch.zeros(3, 10))]
    with pytest.raises(CompressorError, match=r"hx\[1\] c must have shape \(2, 10\)"):
        model(torch.randn(3, 2, 4), bad)


def test_compiles_with_torch_compile():
    require_kernel("onlstm_sequence", "cpu")
    torch.manual_seed(7)
    model = ONLSTM(3, 8, 2, chunk_size=4)
    x = torch.randn(4, 2, 3)
    want = model(x)[0]
    got = torch.compile(model, fullgraph=True)(x)[0]
    torch.testing.assert_close(got, want)


@settings(max_examples=15, deadline=None)
@given(chunk=st.integers(1, 5), masters=st.integers(1, 12), layers=st.integers(1, 3),
       steps=st.integers(1, 5), batch=st.integers(1, 3), input_size=st.integers(1, 6))
def test_fuzz_fused_equals_reference(chunk, masters, layers, steps, batch, input_size):
    require_kernel("onlstm_sequence", "cpu")
    model = ONLSTM(input_size, chunk * masters, layers, chunk_size=chunk).double()
    x = torch.randn(steps, batch, input_size, dtype=torch.float64, requires_grad=True)
    _assert_fused_equals_reference(model, x, tol=1e-10)


def test_reference_path_exports_to_onnx():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import io
    import warnings

    torch.manual_seed(8)
    model = ONLSTM(4, 8, 2, chunk_size=4).eval()
    model.use_fused_kernels = False  # the public contract for export: standard torch ops only
    x = torch.randn(5, 2, 4)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False)
    session = ort.InferenceSession(buf.getvalue())
    (out, *_rest) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x)[0].detach())
