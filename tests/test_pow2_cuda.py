"""The CUDA pow2_linear kernel against decode-then-matmul in float64.

Codes are built by a small torch-only packer that follows the contract in csrc/ops.cpp, so these
tests stand on their own (they do not use compressor.quantization). Every CUDA test skips with a
reason when there is no GPU; the packer's own round-trip tests run everywhere.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import require_kernel

OP = "pow2_linear"


# ---- a local packer and decoder following the contract ------------------------------------------

def k_padded(k: int) -> int:
    return (k + 7) // 8 * 8


def levels_exponents(bits: int, n1: int) -> range:
    """Exponents n2..n1 of the nonzero levels, n2 = n1 + 1 - 2^(bits-1)/2 (DESIGN §3)."""
    return range(n1 + 1 - 2 ** (bits - 1) // 2, n1 + 1)


def random_pow2_weight(n_out: int, k: int, bits: int, n1: int, gen, zeros: float = 0.25):
    """float64 weights drawn from the levels {0} U {+-2^n}, about `zeros` of them zero."""
    exps = torch.tensor(list(levels_exponents(bits, n1)), dtype=torch.float64)
    pick = exps[torch.randint(len(exps), (n_out, k), generator=gen)]
    sign = torch.where(torch.rand(n_out, k, generator=gen) < 0.5, -1.0, 1.0).double()
    keep = torch.rand(n_out, k, generator=gen) >= zeros
    return torch.where(keep, sign * torch.pow(2.0, pick), torch.zeros((), dtype=torch.float64))


def pack(weight: torch.Tensor, bits: int, n1: int):
    """(codes, nonzero) of a float64 pow2 weight (N, K), exactly as the contract lays them out."""
    n_out, k = weight.shape
    kp = k_padded(k)
    w = torch.zeros(n_out, kp, dtype=torch.float64)
    w[:, :k] = weight
    nz = w != 0
    exp = torch.where(nz, torch.log2(w.abs().clamp_min(1e-300)).round(), torch.zeros_like(w)).long()
    m = torch.where(nz, (n1 + 1 - exp) if bits <= 4 else (n1 - exp), torch.zeros_like(exp))
    assert int(m.min()) >= 0 and int(m.max()) <= 7, "weight is not on the levels of (bits, n1)"
    nibble = ((w < 0).long() << 3) | m
    nibble = torch.where(nz, nibble, torch.zeros_like(nibble))
    codes = (nibble[:, 0::2] | (nibble[:, 1::2] << 4)).to(torch.uint8)
    if bits <= 4:
        return codes.contiguous(), torch.empty(0, dtype=torch.uint8)
    weights_of_bits = 1 << torch.arange(8)
    bitmap = (nz.view(n_out, kp // 8, 8).long() * weights_of_bits).sum(-1).to(torch.uint8)
    return codes.contiguous(), bitmap.contiguous()


def decode(codes: torch.Tensor, nonzero: torch.Tensor, k: int, bits: int, n1: int):
    """float64 weight (N, K) of packed codes, following the contract (any nibble value)."""
    codes = codes.cpu().long()
    nibble = torch.stack([codes & 15, codes >> 4], dim=-1).flatten(1)
    m = (nibble & 7).double()
    sign = torch.where(nibble & 8 != 0, -1.0, 1.0).double()
    if bits <= 4:
        mag = torch.where(m == 0, 0.0, torch.pow(2.0, n1 + 1 - m))
    else:
        bit = (nonzero.cpu().long().unsqueeze(-1) >> torch.arange(8)) & 1
        mag = torch.where(bit.flatten(1) != 0, torch.pow(2.0, n1 - m), 0.0)
    return (sign * mag)[:, :k]


def make_case(m, k, n_out, bits, n1, seed=0, with_bias=True, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    weight = random_pow2_weight(n_out, k, bits, n1, gen)
    codes, nonzero = pack(weight, bits, n1)
    x = torch.randn(m, k, generator=gen, dtype=torch.float64).to(dtype)
    bias = torch.randn(n_out, generator=gen, dtype=torch.float64) if with_bias else None
    return weight, codes, nonzero, x, bias


def expected(x, weight, bias):
    """float64 result and the bound sum|x||w| + |b| that scales its rounding error."""
    xd = x.double().cpu()
    out = xd @ weight.T
    scale = xd.abs() @ weight.abs().T
    if bias is not None:
        out, scale = out + bias, scale + bias.abs()
    return out, scale


def run_cuda(x, codes, nonzero, bias, k, bits, n1):
    dev = "cuda"
    b = None if bias is None else bias.float().to(dev)
    return torch.ops.compressor.pow2_linear(x.to(dev), codes.to(dev), nonzero.to(dev), b, k, bits,
                                            n1)


def assert_close_to(got, want, scale, rel, what=""):
    # Outputs may be subnormal in float32 for tiny n1: allow a couple of the smallest steps too.
    err = (got.double().cpu() - want).abs()
    bound = rel * scale + 2.0 ** -148
    worst = err.max().item()
    assert torch.all(err <= bound), f"{what} max err {worst:.3e}, bound {bound.min():.3e}"
    print(f"{what}: max abs err {worst:.2e}")


# ---- the packer itself (runs without a GPU) ------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 5])
@pytest.mark.parametrize("k", [1, 7, 8, 13, 40])
def test_local_packer_round_trips(bits, k):
    gen = torch.Generator().manual_seed(bits * 100 + k)
    weight = random_pow2_weight(5, k, bits, 3, gen)
    codes, nonzero = pack(weight, bits, 3)
    assert codes.shape == (5, k_padded(k) // 2) and codes.dtype == torch.uint8
    assert nonzero.shape == ((5, k_padded(k) // 8) if bits == 5 else (0,))
    torch.testing.assert_close(decode(codes, nonzero, k, bits, 3), weight, rtol=0, atol=0)


def test_local_packer_matches_hand_made_nibbles():
    weight = torch.tensor([[4.0, -1.0, 0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 1.0]])  # n1 = 2, 4 bits
    codes, _ = pack(weight.double(), 4, 2)
    # 4 = 2^(2 - 1 + 1) -> m 1; -1 -> sign + m 3; 0.5 -> m 4; -0.5 -> 0xC; 1 -> m 3
    assert codes.tolist() == [[0xB1, 0x40, 0x0C, 0x00, 0x03, 0, 0, 0]]
    codes5, bitmap = pack(weight.double(), 5, 2)
    assert codes5.tolist()[0][:2] == [0xA0, 0x30] and bitmap.tolist() == [[0x1B, 0x01]]


# ---- the kernel ----------------------------------------------------------------------------------

# (M, K, N): size-1 dims, K % 8 != 0, K % 32 == 0 (16-byte loads) and != 0 (4-byte loads), several
# K tiles for each M tile size (1, 2, 4, 8 rows), M not a multiple of the tile, more work items
# than resident blocks.
SHAPES = [(1, 1, 1), (1, 7, 5), (3, 9, 1), (1, 33, 17), (2, 64, 40), (5, 100, 31), (8, 96, 9),
          (64, 257, 70), (1, 1024, 16), (4, 1000, 3), (9, 4104, 33), (1, 13056, 9),
          (6, 13056, 5), (1, 24, 20000), (300, 40, 1200)]


@pytest.mark.cuda
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_matches_decode_then_matmul(shape, bits):
    require_kernel(OP, "cuda")
    m, k, n_out = shape
    weight, codes, nonzero, x, bias = make_case(m, k, n_out, bits, n1=1, seed=sum(shape) + bits)
    got = run_cuda(x, codes, nonzero, bias, k, bits, 1)
    assert got.shape == (m, n_out) and got.dtype == torch.float32 and got.is_cuda
    want, scale = expected(x, weight, bias)
    assert_close_to(got, want, scale, 1e-5, f"{shape} bits={bits}")


@pytest.mark.cuda
@pytest.mark.parametrize("n1", [-140, -119, -20, 0, 5, 100])
@pytest.mark.parametrize("bits", [2, 4, 5])
@pytest.mark.parametrize("with_bias", [False, True])
def test_tiny_and_large_exponents(n1, bits, with_bias):
    require_kernel(OP, "cuda")
    weight, codes, nonzero, x, bias = make_case(3, 77, 11, bits, n1, seed=7, with_bias=with_bias)
    if bias is not None:
        bias = bias * 2.0 ** n1  # keep the bias on the outputs' scale
    got = run_cuda(x, codes, nonzero, bias, 77, bits, n1)
    want, scale = expected(x, weight, None if bias is None else bias.float().double())
    assert_close_to(got, want, scale, 1e-5, f"n1={n1} bits={bits}")


@pytest.mark.cuda
@pytest.mark.parametrize("bits", [4, 5])
@pytest.mark.parametrize("k", [29, 64])
def test_every_nibble_value(bits, k):
    """Raw random bytes: every sign/magnitude nibble, signed zeros and set padding bits decode as
    the contract says (padding columns multiply zeros whatever their codes hold)."""
    require_kernel(OP, "cuda")
    gen = torch.Generator().manual_seed(k + bits)
    codes = torch.randint(0, 256, (13, k_padded(k) // 2), generator=gen, dtype=torch.uint8)
    nonzero = (torch.randint(0, 256, (13, k_padded(k) // 8), generator=gen, dtype=torch.uint8)
               if bits == 5 else torch.empty(0, dtype=torch.uint8))
    x = torch.randn(4, k, generator=gen, dtype=torch.float64).float()
    got = run_cuda(x, codes, nonzero, None, k, bits, 2)
    want, scale = expected(x, decode(codes, nonzero, k, bits, 2), None)
    assert_close_to(got, want, scale, 1e-5, f"raw codes bits={bits}")


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 5])
def test_float64_input_is_exact_to_double_rounding(m):
    require_kernel(OP, "cuda")
    weight, codes, nonzero, x, bias = make_case(m, 203, 19, 5, n1=-3, seed=3, dtype=torch.float64)
    got = run_cuda(x, codes, nonzero, bias, 203, 5, -3)
    assert got.dtype == torch.float64
    want, scale = expected(x, weight, bias.float().double())
    assert_close_to(got, want, scale, 1e-13, "float64")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 8])
def test_half_inputs_within_twice_torch_error(dtype, m):
    require_kernel(OP, "cuda")
    weight, codes, nonzero, x, bias = make_case(m, 515, 64, 4, n1=0, seed=11, dtype=dtype)
    got = run_cuda(x, codes, nonzero, bias, 515, 4, 0)
    assert got.dtype == dtype
    want, _ = expected(x, weight, bias.float().double())
    torch_out = torch.nn.functional.linear(x.cuda(), weight.to(dtype).cuda(), bias.to(dtype).cuda())
    ours = (got.double().cpu() - want).abs().max()
    torchs = (torch_out.double().cpu() - want).abs().max()
    assert ours <= 2 * torchs + 1e-3, (ours, torchs)


@pytest.mark.cuda
@pytest.mark.parametrize("offset", [1, 4])
def test_misaligned_codes_views(offset):
    """Offset views: 1 byte (the binding makes an aligned copy) and 4 bytes (4-byte loads)."""
    require_kernel(OP, "cuda")
    weight, codes, nonzero, x, bias = make_case(2, 64, 6, 5, n1=0, seed=5)
    want, scale = expected(x, weight, bias)
    for name in ("codes", "nonzero"):
        src = codes if name == "codes" else nonzero
        store = torch.zeros(src.numel() + offset, dtype=torch.uint8, device="cuda")
        view = store[offset:].view(src.shape)
        view.copy_(src.cuda())
        args = (view, nonzero.cuda()) if name == "codes" else (codes.cuda(), view)
        got = torch.ops.compressor.pow2_linear(x.cuda(), *args, bias.float().cuda(), 64, 5, 0)
        assert_close_to(got, want, scale, 1e-5, f"{name} offset {offset}")


@pytest.mark.cuda
def test_empty_shapes():
    require_kernel(OP, "cuda")
    codes = torch.zeros(4, 8, dtype=torch.uint8, device="cuda")
    empty = torch.empty(0, dtype=torch.uint8, device="cuda")
    out = torch.ops.compressor.pow2_linear(torch.randn(0, 16, device="cuda"), codes, empty, None,
                                           16, 4, 0)
    assert out.shape == (0, 4)
    bias = torch.randn(4, device="cuda")
    out = torch.ops.compressor.pow2_linear(torch.randn(3, 0, device="cuda"),
                                           torch.zeros(4, 0, dtype=torch.uint8, device="cuda"),
                                           empty, bias, 0, 4, 0)
    torch.testing.assert_close(out, bias.expand(3, 4))


@pytest.mark.cuda
def test_opcheck():
    require_kernel(OP, "cuda")
    pytest.importorskip("compressor.ops.pow2", reason="the fake is in compressor.ops.pow2")
    _, codes, nonzero, x, bias = make_case(3, 21, 7, 5, n1=0, seed=1)
    args = (x.cuda(), codes.cuda(), nonzero.cuda(), bias.float().cuda(), 21, 5, 0)
    torch.library.opcheck(torch.ops.compressor.pow2_linear.default, args)


@pytest.mark.cuda
@pytest.mark.parametrize("bits", [4, 5])
def test_wrapper_noncontiguous_and_batched_input(bits):
    require_kernel(OP, "cuda")
    pow2 = pytest.importorskip("compressor.ops.pow2", reason="compressor.ops.pow2 is not there yet")
    weight, codes, nonzero, _, bias = make_case(1, 45, 12, bits, n1=2, seed=9)
    x = torch.randn(45, 6, dtype=torch.float64).float().t()  # (6, 45), not contiguous
    assert not x.is_contiguous()
    args = (codes.cuda(), nonzero.cuda(), bias.float().cuda(), 45, bits, 2)
    got = pow2.pow2_linear(x.cuda(), *args)
    want, scale = expected(x, weight, bias.float().double())
    assert_close_to(got, want, scale, 1e-5, "non-contiguous")
    x3 = torch.randn(2, 3, 45).float()
    got3 = pow2.pow2_linear(x3.cuda(), *args)
    want3, scale3 = expected(x3.reshape(6, 45), weight, bias.float().double())
    assert got3.shape == (2, 3, 12)
    assert_close_to(got3.reshape(6, 12), want3, scale3, 1e-5, "3-d input")


@pytest.mark.cuda
@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 12), k=st.integers(1, 300), n_out=st.integers(1, 70),
       bits=st.integers(2, 5), n1=st.integers(-30, 30), seed=st.integers(0, 2**16))
def test_fuzz_against_decode_then_matmul(m, k, n_out, bits, n1, seed):
    require_kernel(OP, "cuda")
    weight, codes, nonzero, x, bias = make_case(m, k, n_out, bits, n1, seed=seed)
    bias = bias * 2.0 ** n1
    got = run_cuda(x, codes, nonzero, bias, k, bits, n1)
    want, scale = expected(x, weight, bias.float().double())
    assert_close_to(got, want, scale, 1e-5, "fuzz")


# ---- bad input: RuntimeError naming the argument ------------------------------------------------

def good_args(bits=4, k=20, n_out=3):
    _, codes, nonzero, x, bias = make_case(2, k, n_out, bits, n1=0)
    return [x.cuda(), codes.cuda(), nonzero.cuda(), bias.float().cuda(), k, bits, 0]


def u8(*shape):
    return torch.zeros(shape, dtype=torch.uint8, device="cuda")


# case -> (argument position, replacement made from the good value, expected message)
BAD = {
    "codes dtype": (1, lambda t: t.int(), "codes must be"),
    "codes shape": (1, lambda t: u8(3, 11), "codes must have shape"),
    "codes 1-d": (1, lambda t: t.flatten(), "codes must have 2 dims"),
    "codes device": (1, lambda t: t.cpu(), "codes must be on"),
    "codes strided": (1, lambda t: u8(12, 3).t(), "codes must be contiguous"),
    "bitmap for 4 bits": (2, lambda t: u8(3, 3), "nonzero must be empty"),
    "bits 1": (5, lambda b: 1, "bits must be in 2..5"),
    "bits 6": (5, lambda b: 6, "bits must be in 2..5"),
    "in_features": (4, lambda k: 21, "input has 20 columns but in_features"),
    "input dtype": (0, lambda t: t.int(), "input must be float32"),
    "input strided": (0, lambda t: torch.randn(20, 2, device="cuda").t(), "input must be contig"),
    "input on cpu": (0, lambda t: t.cpu(), "input must be a CUDA tensor"),
    "bias shape": (3, lambda t: t[:2], "bias must have shape"),
    "bias device": (3, lambda t: t.cpu(), "bias must be on"),
}


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(BAD), ids=str)
def test_bad_input_names_the_argument(case):
    require_kernel(OP, "cuda")
    args = good_args()
    where, replace, message = BAD[case]
    args[where] = replace(args[where])
    with pytest.raises(RuntimeError, match=f"pow2_linear: {message}"):
        torch.ops.compressor.pow2_linear(*args)


@pytest.mark.cuda
@pytest.mark.parametrize("bad_shape", [(3, 2), (2, 3), (3,)])
def test_bad_bitmap_shape_for_5_bits(bad_shape):
    require_kernel(OP, "cuda")
    args = good_args(bits=5, k=20)  # K_pad = 24: the bitmap is (3, 3)
    args[2] = torch.zeros(bad_shape, dtype=torch.uint8, device="cuda")
    with pytest.raises(RuntimeError, match="pow2_linear: nonzero must have"):
        torch.ops.compressor.pow2_linear(*args)
    args[2] = torch.zeros(3, 3, dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match="pow2_linear: nonzero must be"):
        torch.ops.compressor.pow2_linear(*args)
