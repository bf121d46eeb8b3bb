"""Fused ON-LSTM ops against their PyTorch twins: values, every gradient, odd shapes, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.errors import CompressorError
from compressor.ops import onlstm_cell, onlstm_sequence, reference
from compressor.ops.onlstm import gate_width
from tests.conftest import require_kernel

# (hidden, chunk): odd sizes, chunk 1, chunk == hidden, more masters than a warp
SIZES = [(1, 1), (7, 1), (7, 7), (12, 3), (33, 11), (30, 10), (70, 2)]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _cell_inputs(batch, hidden, chunk, dtype, device, scale=2.0):
    width = gate_width(hidden, chunk)
    make = lambda *s: (torch.randn(*s, dtype=dtype, device=device) * scale).requires_grad_()  # noqa: E731
    return make(batch, width), make(batch, width), make(batch, hidden)


def _seq_inputs(steps, batch, hidden, chunk, dtype, device):
    width = gate_width(hidden, chunk)
    make = lambda *s, sc=1.0: (torch.randn(*s, dtype=dtype, device=device) * sc).requires_grad_()  # noqa: E731
    return (make(steps, batch, width, sc=1.5), make(width, hidden, sc=0.4), make(width),
            make(batch, hidden), make(batch, hidden))


def _compare(fn_got, fn_want, inputs, tol):
    got, want = fn_got(*inputs), fn_want(*inputs)
    seeds = [torch.randn_like(t) for t in want]
    grads_got = torch.autograd.grad(got, inputs, seeds)
    grads_want = torch.autograd.grad(want, inputs, seeds)
    names = ["out"] * len(got) + ["grad"] * len(inputs)
    for name, a, b in zip(names, [*got, *grads_got], [*want, *grads_want], strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")  # noqa: B023


@pytest.mark.parametrize("hidden,chunk", SIZES)
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_matches_reference(device, hidden, chunk, batch, dtype):
    require_kernel("onlstm_cell", device)
    inputs = _cell_inputs(batch, hidden, chunk, dtype, device)
    _compare(lambda *a: onlstm_cell(*a, chunk), lambda *a: reference.onlstm_cell(*a, chunk),
             inputs, TOL[dtype])


@pytest.mark.parametrize("hidden,chunk", [(7, 1), (12, 3), (33, 11), (40, 40)])
def test_cell_backward_op_matches_twin(device, hidden, chunk):
    require_kernel("onlstm_cell_backward", device)
    xg, hg, cp = (t.detach() for t in _cell_inputs(4, hidden, chunk, torch.float64, device))
    _, c, _ = reference.onlstm_cell(xg, hg, cp, chunk)
    gh, gc, gd = torch.randn_like(cp), torch.randn_like(cp), torch.randn(4, 2, dtype=cp.dtype,
                                                                         device=device)
    got = torch.ops.compressor.onlstm_cell_backward(gh, gc, gd, xg + hg, cp, c, chunk)
    want = reference.onlstm_cell_backward(gh, gc, gd, xg + hg, cp, c, chunk)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("hidden,chunk", SIZES)
@pytest.mark.parametrize("steps,batch", [(1, 1), (6, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sequence_matches_reference(device, hidden, chunk, steps, batch, dtype):
    require_kernel("onlstm_sequence", device)
    inputs = _seq_inputs(steps, batch, hidden, chunk, dtype, device)
    _compare(lambda *a: onlstm_sequence(*a, chunk), lambda *a: reference.onlstm_sequence(*a, chunk),
             inputs, TOL[dtype])


def test_noncontiguous_inputs(device):
    require_kernel("onlstm_sequence", device)
    hidden, chunk = 12, 4
    width = gate_width(hidden, chunk)
    xg = torch.randn(3, 5, width, device=device).transpose(0, 1).requires_grad_()  # (5, 3, G) view
    w = (torch.randn(hidden, width, device=device) * 0.3).t().requires_grad_()
    h0 = torch.randn(hidden, 3, device=device).t().requires_grad_()
    c0 = torch.randn(3, hidden, device=device, requires_grad=True)
    b = torch.randn(2 * width, device=device)[::2].requires_grad_()
    assert not (xg.is_contiguous() or w.is_contiguous() or h0.is_contiguous() or b.is_contiguous())
    _compare(lambda *a: onlstm_sequence(*a, chunk), lambda *a: reference.onlstm_sequence(*a, chunk),
             (xg, w, b, h0, c0), 1e-5)
    xc = torch.randn(width, 3, device=device).t().requires_grad_()
    _compare(lambda x, c: onlstm_cell(x, x * 0.5, c, chunk),
             lambda x, c: reference.onlstm_cell(x, x * 0.5, c, chunk), (xc, c0), 1e-5)


def test_gradcheck_float64(device):
    require_kernel("onlstm_sequence", device)
    cell = _cell_inputs(2, 6, 3, torch.float64, device, scale=1.0)
    assert torch.autograd.gradcheck(lambda *a: onlstm_cell(*a, 3), cell)
    seq = _seq_inputs(3, 2, 6, 2, torch.float64, device)
    assert torch.autograd.gradcheck(lambda *a: onlstm_sequence(*a, 2), seq)


def test_opcheck(device):
    require_kernel("onlstm_sequence", device)
    xg, hg, cp = _cell_inputs(3, 10, 5, torch.float32, device)
    ops = torch.ops.compressor
    torch.library.opcheck(ops.onlstm_cell.default, (xg, hg, cp, 5))
    h, c, _ = ops.onlstm_cell(xg, hg, cp, 5)
    grads = (torch.randn_like(h), torch.randn_like(c), torch.randn(3, 2, device=device))
    torch.library.opcheck(ops.onlstm_cell_backward.default,
                          (*grads, (xg + hg).detach(), cp.detach(), c.detach(), 5))
    seq = _seq_inputs(4, 3, 10, 5, torch.float32, device)
    torch.library.opcheck(ops.onlstm_sequence.default, (*seq, 5),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))
    out, cells, dist, gates = ops.onlstm_sequence(*(t.detach() for t in seq), 5)
    grads = (torch.randn_like(out), torch.randn_like(cells), torch.randn_like(dist))
    torch.library.opcheck(ops.onlstm_sequence_backward.default,
                          (*grads, seq[1].detach(), seq[3].detach(), seq[4].detach(), out, cells,
                           gates, 5))


def test_torch_compile(device):
    require_kernel("onlstm_sequence", device)
    seq = [t.detach() for t in _seq_inputs(4, 2, 9, 3, torch.float32, device)]
    compiled = torch.compile(lambda *a: onlstm_sequence(*a, 3)[0].tanh(), fullgraph=True)
    torch.testing.assert_close(compiled(*seq), reference.onlstm_sequence(*seq, 3)[0].tanh())


# hidden > 256: on CUDA each thread of a block handles several hidden units. 1100 masters: the
# float64 cell backward keeps 6 * 8 * 1100 B > 48 KiB in shared memory, the opted-in launch.
@pytest.mark.parametrize("hidden,chunk", [(300, 3), (1100, 1)])
def test_large_hidden_and_many_masters(device, hidden, chunk):
    require_kernel("onlstm_sequence", device)
    cell = _cell_inputs(2, hidden, chunk, torch.float64, device)
    _compare(lambda *a: onlstm_cell(*a, chunk), lambda *a: reference.onlstm_cell(*a, chunk), cell,
             1e-10)
    seq = _seq_inputs(2, 2, hidden, chunk, torch.float64, device)
    _compare(lambda *a: onlstm_sequence(*a, chunk),
             lambda *a: reference.onlstm_sequence(*a, chunk), seq, 1e-10)


def test_empty_batch_and_no_steps(device):
    """Batch 0 and 0 steps give empty outputs and all-zero gradients, with no empty launch."""
    require_kernel("onlstm_sequence", device)
    hidden, chunk = 6, 3

    def check(fn, inputs, shapes):
        out = fn(*inputs)
        assert [tuple(t.shape) for t in out] == shapes
        grads = torch.autograd.grad(out, inputs, [torch.randn_like(t) for t in out])
        for g, t in zip(grads, inputs, strict=True):
            assert g.shape == t.shape and not g.any()

    check(lambda *a: onlstm_cell(*a, chunk), _cell_inputs(0, hidden, chunk, torch.float32, device),
          [(0, 6), (0, 6), (0, 2)])
    for steps, batch in [(0, 2), (3, 0)]:
        seq = _seq_inputs(steps, batch, hidden, chunk, torch.float32, device)
        check(lambda *a: onlstm_sequence(*a, chunk)[:3], seq,
              [(steps, batch, 6), (steps, batch, 6), (steps, batch, 2)])


@pytest.mark.cuda
def test_cuda_masters_beyond_shared_memory_is_a_clear_error():
    require_kernel("onlstm_cell", "cuda")
    # chunk 1: 20000 masters, 2 * 8 * 20000 B of shared memory, above any GPU's per-block maximum
    xg, hg, cp = (t.detach() for t in _cell_inputs(1, 20_000, 1, torch.float64, "cuda"))
    with pytest.raises(RuntimeError, match="onlstm_cell: hidden/chunk_size = 20000 master units "
                                           "need 320000 bytes of shared memory"):
        torch.ops.compressor.onlstm_cell(xg, hg, cp, 1)

def test_wrapper_errors_name_the_argument():
    xg, hg, cp = _cell_inputs(2, 6, 3, torch.float32, "cpu")
    with pytest.raises(CompressorError, match="hidden size 6 must be a positive multiple of "
                                              "chunk_size 4"):
        onlstm_cell(xg, hg, cp, 4)
    with pytest.raises(CompressorError, match=r"xg must have shape \(2, 28\)"):
        onlstm_cell(xg[:, :-1], hg, cp, 3)
    with pytest.raises(CompressorError, match="c_prev must be a"):
        onlstm_cell(xg, hg, cp[0], 3)
    seq = _seq_inputs(3, 2, 6, 3, torch.float32, "cpu")
    with pytest.raises(CompressorError, match=r"h0 must have shape \(2, 6\)"):
        onlstm_sequence(seq[0], seq[1], seq[2], seq[3][:1], seq[4], 3)
    with pytest.raises(CompressorError, match=r"w_hh must have shape \(28, 6\)"):
        onlstm_sequence(seq[0], seq[1][:-1], seq[2], seq[3], seq[4], 3)
    with pytest.raises(TypeError, match="b_hh must have dtype torch.float32"):
        onlstm_sequence(seq[0], seq[1], seq[2].double(), seq[3], seq[4], 3)


def test_kernels_reject_bad_input():
    require_kernel("onlstm_sequence", "cpu")
    ops = torch.ops.compressor
    xg, hg, cp = (t.detach() for t in _cell_inputs(2, 6, 3, torch.float32, "cpu"))
    with pytest.raises(RuntimeError, match="hidden size 6 must be divisible by chunk_size 4"):
        ops.onlstm_cell(xg, hg, cp, 4)
    with pytest.raises(RuntimeError, match="onlstm_cell: hg must have 4\\*hidden"):
        ops.onlstm_cell(xg, hg[:, :-1].contiguous(), cp, 3)
    with pytest.raises(RuntimeError, match="onlstm_cell: xg must be contiguous"):
        ops.onlstm_cell(torch.randn(28, 2).t(), hg, cp, 3)
    with pytest.raises(RuntimeError, match="onlstm_cell: xg must be Float, got Double"):
        ops.onlstm_cell(xg.double(), hg, cp, 3)
    seq = [t.detach() for t in _seq_inputs(3, 2, 6, 3, torch.float32, "cpu")]
    with pytest.raises(RuntimeError, match="onlstm_sequence: c0 must have shape"):
        ops.onlstm_sequence(*seq[:4], seq[4][:, :5].contiguous(), 3)
    with pytest.raises(RuntimeError, match="onlstm_sequence: xg must have 28"):
        ops.onlstm_sequence(seq[0][..., 1:].contiguous(), *seq[1:], 3)
    with pytest.raises(RuntimeError, match="chunk_size must be positive"):
        ops.onlstm_sequence(*seq, 0)


@settings(max_examples=25, deadline=None)
@given(chunk=st.integers(1, 6), masters=st.integers(1, 40), batch=st.integers(1, 4),
       steps=st.integers(1, 4), scale=st.floats(0.05, 4.0))
def test_fuzz_against_reference(chunk, masters, batch, steps, scale):
    require_kernel("onlstm_sequence", "cpu")
    hidden = chunk * masters
    seq = _seq_inputs(steps, batch, hidden, chunk, torch.float64, "cpu")
    with torch.no_grad():
        seq[0].mul_(scale)
    _compare(lambda *a: onlstm_sequence(*a, chunk),
             lambda *a: reference.onlstm_sequence(*a, chunk), seq, 1e-10)
