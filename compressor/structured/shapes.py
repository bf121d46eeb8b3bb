"""How tensor ops move channel ids between dims: broadcasting, reshapes, permutes, indexing.

A tensor's ids are {dim: element id per index} for the dims that hold channels; the other dims
("opaque": batch, space, time) never change size under pruning. Every function here keeps that
invariant: a dim whose size could change is tracked, or its elements are fixed.
"""

import math

import numpy as np
import torch

from compressor.structured.graph import Graph


def dims_of(ids) -> dict:
    return ids if isinstance(ids, dict) else {}


def broadcast(g: Graph, out: torch.Tensor, operands, why: str) -> dict:
    """Ids of an elementwise op's output: operands' channel dims aligned from the right are
    coupled; a channel dim against an opaque dim of the same size cannot shrink (fixed)."""
    result = {}
    for d in range(out.dim()):
        tracked, opaque = [], False
        for real, ids in operands:
            if not isinstance(real, torch.Tensor):
                continue
            j = d - (out.dim() - real.dim())
            if j < 0 or real.shape[j] == 1 and out.shape[d] != 1:
                continue
            if j in dims_of(ids):
                tracked.append(dims_of(ids)[j])
            elif real.shape[j] > 1:
                opaque = True
        if not tracked:
            continue
        for other in tracked[1:]:
            g.unite(tracked[0], other)
        if opaque:
            g.fix(tracked[0], f"{why}: channels meet a dim that cannot shrink")
        result[d] = tracked[0]
    return result


def permuted(ids: dict, order) -> dict:
    """ids after out = x.permute(order)."""
    return {new: ids[old] for new, old in enumerate(order) if old in ids}


def segments(a, b) -> list[tuple[list[int], list[int]]] | None:
    """Pair up dims of shape a and shape b (same numel) into minimal groups of equal product;
    size-1 dims form their own groups. None if the shapes do not factor (never for valid views)."""
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1:
            out.append(([i], []))
            i += 1
            continue
        if j < len(b) and b[j] == 1:
            out.append(([], [j]))
            j += 1
            continue
        if i >= len(a) or j >= len(b):
            return None
        ins, outs, pa, pb = [i], [j], a[i], b[j]
        while pa != pb:
            if pa < pb:
                i += 1
                if i >= len(a):
                    return None
                ins.append(i)
                pa *= a[i]
            else:
                j += 1
                if j >= len(b):
                    return None
                outs.append(j)
                pb *= b[j]
        out.append((ins, outs))
        i, j = i + 1, j + 1
    return out


def reshaped(g: Graph, ids: dict, shape_in, shape_out, why: str, constants=None) -> dict:
    """ids after a view/reshape/flatten from shape_in to shape_out.

    Merging a channel dim with opaque dims repeats each channel over them (flatten -> Linear);
    splitting a channel dim C into (A, B, ...) makes every run of B*... consecutive channels one
    class (a head, a channel group), tracked on A. `constants[j]` is the literal size the code
    wrote for output dim j (None where it came from a tensor's size); a literal on a dim that
    shrinks is returned in the '_sizes' entry so the caller can find the attribute behind it.
    """
    pairs = segments(list(shape_in), list(shape_out))
    result, sizes = {}, []
    if pairs is None:
        for x in ids.values():
            g.fix(x, f"{why}: reshape not understood")
        return result
    for ins, outs in pairs:
        tracked = [d for d in ins if d in ids]
        if not tracked:
            continue
        if len(tracked) > 1 or not outs:
            for d in tracked:
                g.fix(ids[d], f"{why}: reshape mixes channel dims")
            continue
        t = tracked[0]
        if len(ins) == 1 and len(outs) == 1:
            result[outs[0]] = ids[t]
        elif len(outs) == 1:  # merge
            shape = [shape_in[d] for d in ins]
            view = [1] * len(ins)
            view[ins.index(t)] = shape_in[t]
            result[outs[0]] = np.broadcast_to(ids[t].reshape(view), shape).ravel().copy()
        elif len(ins) == 1:  # split: the outermost dim > 1 keeps the classes
            outer, classes = _split_dim(g, ids[t], outs, shape_out, why, constants)
            result[outer] = classes
            literal = None if constants is None else constants.get(outer)
            if literal is not None and literal != -1:
                sizes.append((literal, classes))
        else:
            g.fix(ids[t], f"{why}: reshape regroups channel dims")
    if sizes:
        result["_sizes"] = sizes
    return result


def _split_dim(g: Graph, ids, outs, shape_out, why, constants):
    """C split into (A, B, ...): each run of B*... channels becomes one class, tracked on A."""
    real = [d for d in outs if shape_out[d] > 1]
    outer, inner = real[0], math.prod(shape_out[d] for d in real[1:])
    blocks = ids.reshape(shape_out[outer], inner)
    for row in blocks:
        g.unite_all(row)
    for d in real[1:]:
        if constants is not None and constants.get(d) is None:
            g.fix(ids, f"{why}: split size computed from a shrinking dim")
    return outer, blocks[:, 0].copy()


def normalize_index(index, ndim: int) -> list:
    """A getitem index as a list with Ellipsis expanded."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(item is Ellipsis for item in items):
        at = next(k for k, item in enumerate(items) if item is Ellipsis)
        used = sum(1 for item in items if item is not None and item is not Ellipsis)
        items[at:at + 1] = [slice(None)] * (ndim - used)
    return items


def indexed(g: Graph, ids: dict, real: torch.Tensor, index, why: str) -> dict:
    """ids of real[index]: full slices keep a channel dim; an int, a partial slice or a tensor
    index on a channel dim would pick fixed positions, so those channels are fixed."""
    items = normalize_index(index, real.dim())
    result, d_in, d_out = {}, 0, 0
    for item in items:
        if item is None:
            d_out += 1
            continue
        x = ids.get(d_in)
        if isinstance(item, slice):
            full = item == slice(None) or (
                item.step in (None, 1) and (item.start in (None, 0))
                and (item.stop is None or item.stop >= real.shape[d_in]))
            if x is not None:
                if full:
                    result[d_out] = x
                else:
                    g.fix(x, f"{why}: slices a channel dim at fixed positions")
                    result[d_out] = x[item]
            d_out += 1
        elif isinstance(item, int):
            if x is not None:
                g.fix(x, f"{why}: indexes a channel dim at a fixed position")
        else:
            for y in ids.values():
                g.fix(y, f"{why}: tensor indexing")
            return {}
        d_in += 1
    for d in range(d_in, real.dim()):
        if d in ids:
            result[d_out] = ids[d]
        d_out += 1
    return result
