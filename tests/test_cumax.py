"""The fused cumax op against its twin: values, gradients, odd shapes, bad input, compile."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.ops import cumax, reference
from tests.conftest import require_kernel

SHAPES = [(1,), (7,), (3, 1), (5, 33), (2, 3, 65), (4, 100), (1, 1, 1), (130, 10)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(device, shape, dtype):
    require_kernel("cumax", device)
    x = torch.randn(shape, dtype=dtype, device=device) * 3
    got = torch.ops.compressor.cumax(x)
    want = reference.cumax(x)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    print(f"{shape} {dtype}: max err {(got - want).abs().max().item():.2e}")


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_any_dim_and_noncontiguous(device, dim):
    require_kernel("cumax", device)
    x = torch.randn(6, 9, 5, device=device).transpose(0, 2)  # non-contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(cumax(x, dim), reference.cumax(x, dim), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 7), (2, 40), (1, 1), (4, 70)])
def test_backward_matches_reference(device, shape):
    require_kernel("cumax_backward", device)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(shape, dtype=torch.float64, device=device)
    (got,) = torch.autograd.grad(cumax(x), x, g)
    x_ref = x.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(reference.cumax(x_ref), x_ref, g)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(reference.cumax_backward(g, x.detach()), want)


def test_gradcheck_float64(device):
    require_kernel("cumax_backward", device)
    x = torch.randn(4, 11, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cumax(t, -1), (x,))
    y = torch.randn(3, 5, 2, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cumax(t, 1), (y,))


def test_opcheck(device):
    require_kernel("cumax", device)
    x = torch.randn(5, 13, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.compressor.cumax.default, (x,))
    g = torch.randn(5, 13, device=device)
    torch.library.opcheck(torch.ops.compressor.cumax_backward.default, (g, x.detach()))


def test_torch_compile(device):
    require_kernel("cumax", device)
    x = torch.randn(4, 17, device=device)
    compiled = torch.compile(lambda t: cumax(t) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(x), reference.cumax(x) * 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_matches_reference(device, bad):
    require_kernel("cumax", device)
    x = torch.randn(3, 8, device=device)
    x[1, 3] = bad
    torch.testing.assert_close(cumax(x), reference.cumax(x), equal_nan=True)


def test_all_negative_inf_row_is_nan_like_reference(device):
    require_kernel("cumax", device)
    x = torch.full((2, 4), float("-inf"), device=device)
    torch.testing.assert_close(cumax(x), reference.cumax(x), equal_nan=True)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,)])
def test_empty(device, shape):
    require_kernel("cumax", device)
    x = torch.randn(shape, device=device)
    assert cumax(x).shape == x.shape
    assert torch.ops.compressor.cumax(x).shape == x.shape


def test_bad_input_messages():
    with pytest.raises(TypeError, match="cumax: x must be a floating-point"):
        cumax(torch.arange(5))
    with pytest.raises(IndexError, match="dim=2 is out of range"):
        cumax(torch.randn(3, 4), dim=2)
    with pytest.raises(ValueError, match="at least 1 dim"):
        cumax(torch.tensor(1.0))


def test_kernel_rejects_bad_input():
    require_kernel("cumax", "cpu")
    with pytest.raises(RuntimeError, match="cumax: x must be float32 or float64"):
        torch.ops.compressor.cumax(torch.arange(5))
    with pytest.raises(RuntimeError, match="cumax: x must be contiguous"):
        torch.ops.compressor.cumax(torch.randn(4, 5).t())
    with pytest.raises(RuntimeError, match="grad shape"):
        torch.ops.compressor.cumax_backward(torch.randn(2, 3), torch.randn(3, 3))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_within_twice_torch_error(dtype):
    require_kernel("cumax", "cuda")
    x = torch.randn(64, 97, device="cuda") * 2
    exact = reference.cumax(x.double())
    ours = (cumax(x.to(dtype)).double() - exact).abs().max()
    torchs = (reference.cumax(x.to(dtype)).double() - exact).abs().max()
    assert ours <= 2 * torchs + 1e-3, (ours, torchs)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 20), length=st.integers(1, 90), scale=st.floats(0.01, 30))
def test_fuzz_against_reference(rows, length, scale):
    require_kernel("cumax", "cpu")
    x = torch.randn(rows, length, dtype=torch.float64) * scale
    torch.testing.assert_close(cumax(x), reference.cumax(x))
    g = torch.randn_like(x)
    torch.testing.assert_close(torch.ops.compressor.cumax_backward(g, x),
                               reference.cumax_backward(g, x))
