"""Dense weights -> the CSR forms the sparse kernels take.

A conv weight (Cout, Cin/groups, kh, kw) is stored once as CSR over its flattened columns
c*kh*kw + r*kw + s (`csr_from_dense`); `conv_offsets` turns those columns into offsets into the
padded input of one input size
(Park et al.'s "virtual dense" columns), which modules cache per size.
"""

import torch


def csr_from_dense(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values float32, col int32, row_ptr int32) of weight viewed as (rows, -1); zeros dropped."""
    matrix = weight.detach().reshape(weight.shape[0], -1)
    rows, cols = matrix.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=matrix.shape[0])
    row_ptr = torch.zeros(matrix.shape[0] + 1, dtype=torch.int32, device=matrix.device)
    row_ptr[1:] = torch.cumsum(counts, 0)
    return matrix[rows, cols].float().contiguous(), cols.int().contiguous(), row_ptr


def dense_from_csr(values, col, row_ptr, shape) -> torch.Tensor:
    """The dense weight of `shape` whose flattened rows hold the CSR entries."""
    rows = torch.repeat_interleave(torch.arange(row_ptr.numel() - 1, device=values.device),
                                   (row_ptr[1:] - row_ptr[:-1]).long())
    dense = torch.zeros(shape[0], int(torch.tensor(shape[1:]).prod()), dtype=values.dtype,
                        device=values.device)
    dense[rows, col.long()] = values
    return dense.reshape(shape)


def conv_offsets(col: torch.Tensor, kernel_size, input_hw, padding, dilation) -> torch.Tensor:
    """Flattened conv columns c*kh*kw + r*kw + s -> c*Hp*Wp + r*dil_h*Wp + s*dil_w (int32)."""
    (kh, kw), (h, w), (ph, pw), (dh, dw) = kernel_size, input_hw, padding, dilation
    hp, wp = h + 2 * ph, w + 2 * pw
    col = col.long()
    c, r, s = col // (kh * kw), col % (kh * kw) // kw, col % kw
    offsets = c * (hp * wp) + r * dh * wp + s * dw
    if offsets.numel() and int(offsets.max()) >= 2**31:
        raise ValueError(f"conv_offsets: input {h}x{w} is too large for int32 offsets")
    return offsets.int()


def sparsity(values: torch.Tensor, dense_numel: int) -> float:
    """Fraction of zero weights."""
    return 1.0 - values.numel() / max(dense_numel, 1)
