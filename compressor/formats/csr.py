"""Dense weights <-> the CSR form the sparse kernels take, and the one check of that form.

A weight (rows, ...) is stored as CSR over its flattened columns: for a conv weight
(Cout, Cin/groups, kh, kw) a column is c*kh*kw + r*kw + s. Within a row the columns strictly
increase (sorted, no duplicates); the kernels turn them into input offsets themselves, so nothing
derived from them is cached anywhere and an in-place edit of the columns is seen at once.
"""

import torch

from compressor.errors import CompressorError


def csr_from_dense(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values float32, col int32, row_ptr int32) of weight viewed as (rows, -1); zeros dropped."""
    matrix = weight.detach().reshape(weight.shape[0], -1)
    rows, cols = matrix.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=matrix.shape[0])
    row_ptr = torch.zeros(matrix.shape[0] + 1, dtype=torch.int32, device=matrix.device)
    row_ptr[1:] = torch.cumsum(counts, 0)
    return matrix[rows, cols].float().contiguous(), cols.int().contiguous(), row_ptr


def _fail(op: str, message: str) -> None:
    raise CompressorError(f"{op}: {message}")


def check_csr(op: str, values, col, row_ptr, n_cols: int, col_name: str = "col_idx",
              sorted_rows: bool = True) -> None:
    """The CSR contract every kernel and twin checks, with one-line errors naming the argument:
    1-dim tensors, int32 indices, len(col) == len(values), row_ptr from 0 to nnz without
    decreasing, columns within [0, n_cols) and, with `sorted_rows` (sparse_conv2d, whose kernel
    blocks by column order), strictly increasing within each row. sparse_linear takes rows in any
    order and sums a duplicated column, as its kernel does (one multiply-add per entry)."""
    for name, t in (("values", values), (col_name, col), ("row_ptr", row_ptr)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            _fail(op, f"{name} must be a 1-dim tensor")
    if col.dtype != torch.int32 or row_ptr.dtype != torch.int32:
        _fail(op, f"{col_name} and row_ptr must be int32, got {col.dtype} and {row_ptr.dtype}")
    nnz = values.numel()
    if col.numel() != nnz:
        _fail(op, f"{col_name} has {col.numel()} entries but values has {nnz}")
    if row_ptr.numel() < 1:
        _fail(op, "row_ptr must have rows + 1 >= 1 entries")
    rp = row_ptr.long()
    if int(rp[0]) != 0 or int(rp[-1]) != nnz:
        _fail(op, f"row_ptr must run from 0 to nnz={nnz}, got {int(rp[0])} to {int(rp[-1])}")
    if bool((rp[1:] < rp[:-1]).any()):
        _fail(op, "row_ptr must be non-decreasing")
    if nnz == 0:
        return
    c = col.long()
    lo, hi = int(c.min()), int(c.max())
    if lo < 0 or hi >= n_cols:
        _fail(op, f"{col_name} entries must lie in [0, {n_cols}), got [{lo}, {hi}]; the weight "
                  "does not match the layer")
    if not sorted_rows:
        return
    row_start = torch.zeros(nnz, dtype=torch.bool, device=col.device)
    row_start[rp[:-1][rp[:-1] < nnz]] = True
    bad = (c[1:] <= c[:-1]) & ~row_start[1:]
    if bool(bad.any()):
        k = int(bad.nonzero()[0]) + 1
        _fail(op, f"{col_name} must strictly increase within a row (sorted, no duplicates): "
                  f"{int(c[k - 1])} then {int(c[k])} at {col_name}[{k}]")


def dense_from_csr(values, col, row_ptr, shape, op: str = "dense_from_csr",
                   sorted_rows: bool = True) -> torch.Tensor:
    """The dense weight of `shape` whose flattened rows hold the CSR entries (checked first with
    the same contract as the kernel; duplicated columns sum, as in the kernels)."""
    n_cols = int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
    if row_ptr.numel() != shape[0] + 1:
        _fail(op, f"row_ptr has {row_ptr.numel()} entries for {shape[0]} rows")
    check_csr(op, values, col, row_ptr, n_cols, sorted_rows=sorted_rows)
    rows = torch.repeat_interleave(torch.arange(row_ptr.numel() - 1, device=values.device),
                                   (row_ptr[1:] - row_ptr[:-1]).long(), output_size=values.numel())
    dense = torch.zeros(shape[0], n_cols, dtype=values.dtype, device=values.device)
    dense.index_put_((rows, col.long()), values, accumulate=True)
    return dense.reshape(shape)


def sparsity(values: torch.Tensor, dense_numel: int) -> float:
    """Fraction of zero weights."""
    return 1.0 - values.numel() / max(dense_numel, 1)
