"""Plain-PyTorch twins of every compiled op: the oracle the kernel tests compare against, and the
fallback when the extension is missing. Each twin states its shapes; keep them obvious, not fast.
"""

import torch

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


def sparse_conv2d(input, values, col_offsets, row_ptr, bias, input_hw, kernel_size, stride,
                  padding, dilation, groups):
    """F.conv2d with a CSR weight whose columns are offsets into the padded input.

    input (N, Cin, H, W) with (H, W) == input_hw; values (nnz,) float; col_offsets (nnz,) int,
    = c_local*Hp*Wp + r*dilation_h*Wp + s*dilation_w with Hp, Wp the padded input size; row_ptr
    (Cout + 1,); bias (Cout,) or None. Returns (N, Cout, Ho, Wo).
    """
    (kh, kw), (dh, dw) = kernel_size, dilation
    hp, wp = input_hw[0] + 2 * padding[0], input_hw[1] + 2 * padding[1]
    cout, cin_g = row_ptr.numel() - 1, input.shape[1] // groups
    offs = col_offsets.long()
    c, r, s = offs // (hp * wp), offs % (hp * wp) // wp // dh, offs % wp // dw
    weight = torch.zeros(cout, cin_g, kh, kw, dtype=values.dtype, device=values.device)
    weight.index_put_((_csr_rows(row_ptr, values.numel()), c, r, s), values, accumulate=True)
    return torch.nn.functional.conv2d(input, weight, bias, tuple(stride), tuple(padding),
                                      tuple(dilation), groups)


def sparse_linear(input, values, col_idx, row_ptr, bias):
    """F.linear with a CSR weight: input (M, K), values/col_idx (nnz,), row_ptr (N_out + 1,),
    bias (N_out,) or None. Returns (M, N_out)."""
    n_out = row_ptr.numel() - 1
    weight = torch.zeros(n_out, input.shape[-1], dtype=values.dtype, device=values.device)
    weight.index_put_((_csr_rows(row_ptr, values.numel()), col_idx.long()), values,
                      accumulate=True)
    return torch.nn.functional.linear(input, weight, bias)



# ---- power-of-two quantized matmul ---------------------------------------------------------------


def pow2_linear(input: torch.Tensor, codes: torch.Tensor, nonzero: torch.Tensor,
                bias: torch.Tensor | None, in_features: int, bits: int, n1: int) -> torch.Tensor:
    """input (M, K) @ W^T + bias with W (N, K) decoded from the packed pow2 codes.

    codes: uint8 (N, K_pad/2); nonzero: uint8 (N, K_pad/8) for bits=5, empty otherwise;
    bias: (N,) or None; K = in_features. Returns (M, N) in input's dtype. Format: quantization.packing.
    """
    from compressor.quantization.packing import unpack_pow2

    weight = unpack_pow2(codes, nonzero, in_features, bits, n1).to(input.dtype)
    return torch.nn.functional.linear(input, weight, None if bias is None else bias.to(input.dtype))



# ---- ON-LSTM fused cell --------------------------------------------------------------------------

