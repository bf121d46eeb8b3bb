"""Plain-PyTorch twins of every compiled op: the oracle the kernel tests compare against, and the
fallback when the extension is missing. Each twin states its shapes; keep them obvious, not fast.
"""

import torch
import torch.nn.functional as F

from compressor.errors import CompressorError
from compressor.formats.csr import check_csr
from compressor.formats.pow2_codes import check_n1, padded_in_features, unpack_pow2
from compressor.formats.pow2_levels import check_bits

# ---- cumax -------------------------------------------------------------------------------------


def cumax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """cumsum(softmax(x)) along `dim`. x: any shape; returns the same shape."""
    return torch.cumsum(torch.softmax(x, dim=dim), dim=dim)


def cumax_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dL/dx of cumax over the last dim, given dL/dy (both shape (..., L)).

    With s = softmax(x) and r = reverse-cumsum(grad): dL/dx = s * (r - <s, r>).
    """
    s = torch.softmax(x, dim=-1)
    r = torch.flip(torch.cumsum(torch.flip(grad, [-1]), -1), [-1])
    return s * (r - (s * r).sum(-1, keepdim=True))


# ---- sparse conv2d / linear ----------------------------------------------------------------------


def _csr_rows(row_ptr: torch.Tensor, nnz: int) -> torch.Tensor:
    """The row of each stored entry of a CSR matrix (nnz,), from row_ptr (rows + 1,)."""
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    rows = torch.arange(counts.numel(), device=row_ptr.device)
    return torch.repeat_interleave(rows, counts, output_size=nnz)


ACTIVATIONS = ("none", "relu", "relu6", "silu")


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """The fused epilogue's activation: none, relu, relu6 or silu."""
    fns = {"none": lambda t: t, "relu": torch.relu, "relu6": torch.nn.functional.relu6,
           "silu": torch.nn.functional.silu}
    if activation not in fns:
        raise CompressorError(f"sparse_conv2d: activation must be one of {', '.join(fns)}, "
                              f"got {activation!r}")
    return fns[activation](x)


def sparse_conv2d(input, values, col_idx, row_ptr, bias, kernel_size, stride, padding, dilation,
                  groups, residual=None, activation="none"):
    """act(F.conv2d(input, W, bias, ...) + residual) with W (Cout, Cin/groups, kh, kw) in CSR.

    input (N, Cin, H, W); values (nnz,) float; col_idx (nnz,) int32, the flattened columns
    c*kh*kw + r*kw + s, strictly increasing within a row; row_ptr (Cout + 1,) int32; bias (Cout,)
    or None; residual (N, Cout, Ho, Wo) or None. Returns (N, Cout, Ho, Wo). The weight is checked
    as the kernels check it (compressor.formats.csr.check_csr).
    """
    kh, kw = kernel_size
    cout, cin_g = row_ptr.numel() - 1, input.shape[1] // groups
    if not torch.compiler.is_compiling():
        check_csr("sparse_conv2d", values, col_idx, row_ptr, cin_g * kh * kw)
    weight = torch.zeros(cout, cin_g * kh * kw, dtype=input.dtype, device=values.device)
    weight[_csr_rows(row_ptr, values.numel()), col_idx.long()] = values.to(input.dtype)
    if cin_g == 0:  # F.conv2d gives no output channels at all for an input without channels
        ho, wo = (conv_out(input.shape[2 + i], kernel_size[i], stride[i], padding[i],
                           dilation[i]) for i in range(2))
        out = input.new_zeros(input.shape[0], cout, ho, wo)
        if bias is not None:
            out = out + bias.to(input.dtype).view(1, -1, 1, 1)
    else:
        out = torch.nn.functional.conv2d(input, weight.view(cout, cin_g, kh, kw),
                                         None if bias is None else bias.to(input.dtype),
                                         tuple(stride), tuple(padding), tuple(dilation), groups)
    return activate(out if residual is None else out + residual, activation)


def sparse_bottleneck(input, conv0, conv1, conv2, kernel_size, residual=None,
                      activations=("none", "none", "none"), stride=1):
    """A residual bottleneck's three convs, one after another: with conv_i = (values, col_idx,
    row_ptr, bias) in CSR (conv0 and conv2 1x1 stride 1, conv1 kernel_size x kernel_size, odd,
    padded kernel_size // 2, with `stride`), groups 1:
    act2(conv2(act1(conv1(act0(conv0(input))))) + residual). input (N, Cin, H, W); residual
    (N, Cout, Ho, Wo) or None, Ho = (H - 1) // stride + 1 (Wo alike). Returns (N, Cout, Ho, Wo)."""
    check_bottleneck_geometry(kernel_size, stride)
    if input.dim() != 4 or input.shape[2] < 1 or input.shape[3] < 1:
        raise CompressorError(f"sparse_bottleneck: input must be (N, C, H, W) with H, W >= 1, "
                              f"got shape {tuple(input.shape)}")
    x = input
    for i, (weights, k) in enumerate(zip((conv0, conv1, conv2), (1, kernel_size, 1), strict=True)):
        s = stride if i == 1 else 1
        x = sparse_conv2d(x, *weights, (k, k), (s, s), (k // 2, k // 2), (1, 1), 1,
                          residual if i == 2 else None, activations[i])
    return x


def check_bottleneck_geometry(kernel_size, stride) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise CompressorError(f"sparse_bottleneck: kernel_size must be an odd int >= 1 (the "
                              f"middle conv padded kernel_size // 2), got {kernel_size!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= 1 << 20:
        raise CompressorError(f"sparse_bottleneck: stride must be an int in [1, 2^20], got "
                              f"{stride!r}")


def sparse_linear(input, values, col_idx, row_ptr, bias):
    """F.linear with a CSR weight: input (M, K), values/col_idx (nnz,), row_ptr (N_out + 1,),
    bias (N_out,) or None. Returns (M, N_out). Duplicate columns in a row are summed, as the
    kernels do (each stored entry is one multiply-add)."""
    check_csr("sparse_linear", values, col_idx, row_ptr, input.shape[-1], sorted_rows=False)
    if not values.is_floating_point():
        raise CompressorError(f"sparse_linear: values must be floating point, got {values.dtype}")
    if bias is not None and tuple(bias.shape) != (row_ptr.numel() - 1,):
        raise CompressorError(f"sparse_linear: bias must have shape ({row_ptr.numel() - 1},), "
                              f"got {tuple(bias.shape)}")
    n_out = row_ptr.numel() - 1
    weight = torch.zeros(n_out, input.shape[-1], dtype=values.dtype, device=values.device)
    weight.index_put_((_csr_rows(row_ptr, values.numel()), col_idx.long()), values,
                      accumulate=True)
    return torch.nn.functional.linear(input, weight.to(input.dtype),
                                      None if bias is None else bias.to(input.dtype))


# ---- power-of-two quantized matmul ---------------------------------------------------------------


def check_int(op: str, name: str, value) -> int:
    """`value` as an int; a float (even 3.0), a bool or anything else is an error naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CompressorError(f"{op}: {name} must be an int, got {value!r}")
    return value


def check_pow2_packed(op: str, codes, nonzero, in_features, bits, n1, device) -> None:
    """The packed-weight contract of the pow2 block of csrc/ops.cpp, as the kernels check it."""
    check_bits(check_int(op, "bits", bits))
    check_n1(check_int(op, "n1", n1))
    if check_int(op, "in_features", in_features) < 0:
        raise CompressorError(f"{op}: in_features must be >= 0, got {in_features}")
    for name, t in (("codes", codes), ("nonzero", nonzero)):
        if not isinstance(t, torch.Tensor):
            raise CompressorError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    k_pad = padded_in_features(in_features)
    if codes.dtype != torch.uint8 or codes.dim() != 2 or codes.shape[1] != k_pad // 2:
        raise CompressorError(f"{op}: codes must be uint8 of shape (out_features, {k_pad // 2}) "
                              f"for in_features={in_features}, got {codes.dtype} "
                              f"{tuple(codes.shape)}")
    want = (codes.shape[0], k_pad // 8) if bits == 5 else (0,)
    if nonzero.dtype != torch.uint8 or (tuple(nonzero.shape) != want if bits == 5
                                        else nonzero.numel() != 0):
        raise CompressorError(f"{op}: nonzero must be uint8 of shape {want} for bits={bits}, "
                              f"got {nonzero.dtype} {tuple(nonzero.shape)}")
    for name, t in (("codes", codes), ("nonzero", nonzero)):
        if t.device != torch.device(device) and not (name == "nonzero" and t.numel() == 0):
            raise CompressorError(f"{op}: {name} is on {t.device} but input is on {device}")


def pow2_linear(input: torch.Tensor, codes: torch.Tensor, nonzero: torch.Tensor,
                bias: torch.Tensor | None, in_features: int, bits: int, n1: int) -> torch.Tensor:
    """input (M, K) @ W^T + bias with W (N, K) decoded from the packed pow2 codes.

    codes: uint8 (N, K_pad/2); nonzero: uint8 (N, K_pad/8) for bits=5, empty otherwise;
    bias: (N,) or None; K = in_features. Returns (M, N) in input's dtype.
    Format: compressor/formats/pow2_codes.py.
    """
    check_pow2_packed("pow2_linear", codes, nonzero, in_features, bits, n1, input.device)
    weight = unpack_pow2(codes, nonzero, in_features, bits, n1).to(input.dtype)
    return torch.nn.functional.linear(input, weight, None if bias is None else bias.to(input.dtype))


def pow2_int8_rows(input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 quantization of input (M, K), as pow2_linear_int8 does it.

    With amax = max |x| of a row (float32) and inv = 127 / amax: q = round_half_even(x * inv)
    clamped to -127..127 and scale = amax / 127. A row whose inv overflows (amax = 0 or below
    ~3.7e-37) has q = 0. Returns q (M, K) float32 integers, scale (M,), finite (M,) bool (the
    row holds no NaN or inf).
    """
    x = input.float()
    amax = x.abs().amax(dim=1) if x.shape[1] else x.new_zeros(x.shape[0])
    finite = torch.isfinite(amax)
    # Tensor / tensor: `127.0 / amax` would be amax.reciprocal() * 127 (1 ulp off a division).
    c127 = torch.full_like(amax, 127.0)
    inv = c127 / amax
    usable = finite & torch.isfinite(inv)
    q = torch.round(x * torch.where(usable, inv, 0.0)[:, None]).clamp(-127, 127)
    q = torch.where(usable[:, None], q, torch.zeros_like(q))
    return q, torch.where(usable, amax / c127, 0.0), finite


def pow2_linear_int8(input: torch.Tensor, codes: torch.Tensor, nonzero: torch.Tensor,
                     bias: torch.Tensor | None, in_features: int, bits: int,
                     n1: int) -> torch.Tensor:
    """pow2_linear with each input row quantized to int8 first (bits <= 4), like torch's
    dynamic int8 Linear: y[m] = (q[m] @ W_int^T) * (scale[m] * 2^(n1 - 6)) + bias, where
    W = W_int * 2^(n1 - 6) holds the exact integers 0, +-1, ..., +-64. A row with NaN or inf is
    NaN throughout. input (M, K) float; returns (M, N) float32. Contract: the pow2 block of
    csrc/ops.cpp."""
    check_pow2_packed("pow2_linear_int8", codes, nonzero, in_features, bits, n1, input.device)
    if bits == 5:
        raise CompressorError("pow2_linear_int8: bits must be <= 4 (a 5-bit level, 128 * "
                              "2^(n1 - 7), is no int8); use pow2_linear")
    q, scale, finite = pow2_int8_rows(input)
    w_int = unpack_pow2(codes, nonzero, in_features, bits, 6)  # n1 = 6: levels 1 .. 64
    acc = (q.double() @ w_int.double().T).float()  # exact integers, as the kernel's int32 sums
    out = acc * (scale * 2.0 ** (n1 - 6))[:, None]
    if bias is not None:
        out = out + bias.float()
    return torch.where(finite[:, None], out, torch.full_like(out, float("nan")))


# ---- ON-LSTM fused cell --------------------------------------------------------------------------



def _onlstm_split(gates: torch.Tensor, chunk_size: int):
    """Views of gates (B, 4D + 2m): master-in, master-forget logits (B, m); o, c, i, f (B, m, C)."""
    hidden = (gates.shape[-1] * chunk_size) // (4 * chunk_size + 2)
    m = hidden // chunk_size
    master_in, master_forget = gates[:, :m], gates[:, m : 2 * m]
    o, c, i, f = gates[:, 2 * m :].reshape(-1, 4 * m, chunk_size).chunk(4, 1)
    return master_in, master_forget, o, c, i, f


def onlstm_cell(xg: torch.Tensor, hg: torch.Tensor, c_prev: torch.Tensor, chunk_size: int):
    """One ON-LSTM step after the matmuls (Shen et al. 2019, official cell).

    xg, hg: (B, 4D + 2m) input and hidden projections (biases included), m = D / chunk_size,
    columns [master in (m) | master forget (m) | o | c | i | f]; c_prev: (B, D).
    Returns h (B, D), c (B, D), dist (B, 2) = [d_f, d_i] per row.
    """
    gates = xg + hg
    master_in, master_forget, o, cell, i, f = _onlstm_split(gates, chunk_size)
    cin = 1.0 - cumax(master_in)
    cforget = cumax(master_forget)
    m = cin.shape[-1]
    dist = torch.stack([1.0 - cforget.sum(-1) / m, cin.sum(-1) / m], dim=-1)
    cin, cforget = cin[:, :, None], cforget[:, :, None]
    overlap = cforget * cin
    forget = torch.sigmoid(f) * overlap + (cforget - overlap)
    ingate = torch.sigmoid(i) * overlap + (cin - overlap)
    # shapes from static sizes only, so a traced scan body captures no symbolic batch size
    c = forget * c_prev.unflatten(-1, (m, chunk_size)) + ingate * torch.tanh(cell)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h.flatten(-2), c.flatten(-2), dist


def onlstm_cell_backward(grad_h, grad_c, grad_dist, gates, c_prev, c, chunk_size: int):
    """Gradients of onlstm_cell w.r.t. the summed gates (B, 4D + 2m) and c_prev (B, D), given
    grad_h, grad_c (B, D) and grad_dist (B, 2). `c` is unused (the kernel's saved output)."""
    del c
    with torch.enable_grad():
        g = gates.detach().requires_grad_()
        cp = c_prev.detach().requires_grad_()
        outs = onlstm_cell(g, torch.zeros_like(g), cp, chunk_size)
        return torch.autograd.grad(outs, (g, cp), (grad_h, grad_c, grad_dist))


def onlstm_sequence(xg, w_hh, b_hh, h0, c0, chunk_size: int):
    """A layer over time. xg (T, B, G) input projection with its bias, w_hh (G, D), b_hh (G,),
    h0, c0 (B, D). Returns out (T, B, D) hidden states, cells (T, B, D), dist (T, B, 2)."""
    h, c, outs, cells, dists = h0, c0, [], [], []
    for t in range(xg.shape[0]):
        h, c, d = onlstm_cell(xg[t], torch.nn.functional.linear(h, w_hh, b_hh), c, chunk_size)
        outs.append(h)
        cells.append(c)
        dists.append(d)
    if not outs:
        empty = xg.new_empty(0, *h0.shape)
        return empty, empty.clone(), xg.new_empty(0, h0.shape[0], 2)
    return torch.stack(outs), torch.stack(cells), torch.stack(dists)


# ---- max pooling ---------------------------------------------------------------------------


def pair(op: str, name: str, value) -> tuple[int, int]:
    """An int or a pair of ints as a pair; anything else is an error naming `op` and `name`."""
    both = (value, value) if isinstance(value, int) else tuple(value)
    if len(both) != 2 or not all(isinstance(v, int) for v in both):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    return both


def conv_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """Output length of a convolution or pool window over `size` (floor mode)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def check_max_pool2d(input, kernel_size, stride, padding) -> None:
    """The max_pool2d contract: a 4-dim input, kernel_size and stride >= 1, padding >= 0 and at
    most half of kernel_size (as torch requires), pairs already."""
    if not isinstance(input, torch.Tensor) or input.dim() != 4:
        raise ValueError("max_pool2d: input must be a 4-dim (N, C, H, W) tensor")
    if min(kernel_size) < 1 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"max_pool2d: kernel_size and stride must be >= 1 and padding >= 0, got "
                         f"{tuple(kernel_size)}, {tuple(stride)}, {tuple(padding)}")
    if any(p > k // 2 for p, k in zip(padding, kernel_size, strict=True)):
        raise ValueError(f"max_pool2d: padding {tuple(padding)} must be at most half of "
                         f"kernel_size {tuple(kernel_size)}")


def max_pool2d(input: torch.Tensor, kernel_size, stride, padding) -> torch.Tensor:
    """F.max_pool2d without indices, dilation 1, floor mode, on the kernel's contract."""
    check_max_pool2d(input, kernel_size, stride, padding)
    return F.max_pool2d(input, tuple(kernel_size), tuple(stride), tuple(padding))
