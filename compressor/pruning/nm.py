"""N:M semi-structured sparsity: at most N nonzeros in every group of M consecutive weights along
the input dimension (dim 1: a Linear's / LSTM's `in`, a Conv's input channels), the pattern
sparse tensor cores accelerate (2:4)."""

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.pruning.masks import MASK_SUFFIX, set_mask
from compressor.pruning.selection import prunable_parameters


def _check_nm(n: int, m: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise CompressorError(f"N:M needs integers 0 < N < M (e.g. 2:4), got {n}:{m}")


def _grouped(t: torch.Tensor, m: int, what: str) -> torch.Tensor:
    """View (out, in, *k) as (..., in/m, m) with the input dim innermost."""
    if t.dim() < 2 or t.shape[1] % m:
        raise CompressorError(f"N:M pruning of {what}: input dim {tuple(t.shape)}[1] is not a "
                              f"multiple of M={m}; exclude this layer or choose another M")
    moved = t.movedim(1, -1)
    return moved.reshape(*moved.shape[:-1], t.shape[1] // m, m)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4, what: str = "weight") -> torch.Tensor:
    """The mask keeping the n largest-magnitude weights of every group of m along dim 1."""
    _check_nm(n, m)
    groups = _grouped(weight.detach().abs(), m, what)
    top = groups.topk(n, dim=-1).indices
    mask = torch.zeros_like(groups).scatter_(-1, top, 1.0)
    moved_shape = weight.movedim(1, -1).shape
    return mask.reshape(moved_shape).movedim(-1, 1).contiguous().to(weight.dtype)


def is_nm_sparse(tensor: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when no group of m along dim 1 holds more than n nonzeros."""
    _check_nm(n, m)
    return bool(((_grouped(tensor, m, "tensor") != 0).sum(-1) <= n).all())


def nm_skip_reason(module: nn.Module, param: torch.Tensor, m: int) -> str | None:
    """Why N:M pruning leaves this weight alone, or None when it applies."""
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "an embedding is a lookup, not a matmul: N:M sparsity accelerates nothing"
    if param.shape[1] % m:
        return (f"reduction dim {param.shape[1]} (dim 1 of {tuple(param.shape)}) is not a "
                f"multiple of M={m}")
    return None


def prune_nm(model: nn.Module, n: int = 2, m: int = 4, exclude=(), strict: bool = False,
             report: dict | None = None) -> dict[str, torch.Tensor]:
    """Apply N:M masks to every prunable weight not excluded (intersected with existing masks);
    returns the masks. A weight N:M cannot apply to (its reduction dim is not a multiple of M,
    an embedding) is skipped and named in `report` ({weight: {"action", "reason"}}), or is an
    error with `strict`."""
    _check_nm(n, m)
    params = prunable_parameters(model, exclude)
    if not params:
        raise CompressorError(f"{type(model).__name__} has nothing to prune (no weight with "
                              f">= 2 dims left after exclusions)")
    skipped = {}
    for qual, (module, name) in params.items():
        reason = nm_skip_reason(module, module._parameters[name], m)
        if reason is not None:
            skipped[qual] = {"action": "kept dense", "reason": reason}
    if skipped and (strict or len(skipped) == len(params)):  # before any mask is set
        first, info = next(iter(skipped.items()))
        raise CompressorError(f"N:M {n}:{m} cannot prune {first}: {info['reason']}"
                              + (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else "")
                              + ("; exclude these weights or drop strict" if strict else
                                 "; no weight of the model can take this pattern"))
    out = {}
    for qual, (module, name) in params.items():
        if qual in skipped:
            continue
        mask = nm_mask(module._parameters[name], n, m, what=qual)
        previous = module._buffers.get(name + MASK_SUFFIX)
        if previous is not None:  # a pruned weight stays pruned
            mask = mask * previous
        set_mask(module, name, mask)
        out[qual] = mask
        if report is not None:
            report[qual] = {"action": f"pruned {n}:{m}",
                            "sparsity": round(float((mask == 0).float().mean()), 4)}
    if report is not None:
        report.update(skipped)
    return out
