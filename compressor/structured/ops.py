"""Channel-id propagation through the functions and tensor methods a traced graph calls.

`propagate_call(ctx, node, args, kwargs, ids_args, out)` returns the ids of the node's output;
an op not listed here fixes the channels of its tensor inputs (they keep their size) and its
output has none, so nothing it touches is ever changed.
"""

import numpy as np
import torch

from compressor.structured.graph import Graph
from compressor.structured.shapes import broadcast, dims_of, indexed, permuted, reshaped

ELEMENTWISE = {
    "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "leaky_relu", "elu", "selu", "mish", "softplus", "dropout", "dropout1d", "dropout2d",
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "square", "invert", "not_", "logical_not",
    "contiguous", "clone", "detach", "float", "half", "double", "to", "type", "type_as",
    "softmax", "log_softmax", "clamp", "clip", "erf", "sin", "cos", "triu", "tril",
    "ones_like", "zeros_like", "empty_like", "rand_like", "randn_like", "full_like",
    "relu6_", "sigmoid_", "tanh_", "isinf", "isnan", "nan_to_num",
}
BINARY = {"add", "sub", "mul", "truediv", "div", "floordiv", "pow", "maximum", "minimum",
          "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "iadd", "imul", "isub",
          "itruediv", "masked_fill", "where", "rsub", "add_", "mul_", "sub_", "div_",
          "masked_fill_", "fmod", "remainder", "atan2", "lerp"}
POOLS = {"max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
         "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d", "interpolate",
         "upsample", "lp_pool2d", "max_pool2d_with_indices"}
REDUCTIONS = {"sum", "mean", "amax", "amin", "std", "var", "prod", "logsumexp", "norm",
              "max", "min", "argmax", "argmin", "all", "any"}
SHAPE_ONLY = {"size", "dim", "numel", "getattr", "new_ones", "new_zeros", "new_empty",
              "new_full", "new_tensor", "ones", "zeros", "arange", "full", "empty", "tensor",
              "randn", "rand", "eye", "linspace"}


def _name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _where(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    owner = next(reversed(stack), "") if stack else ""
    return f"{_name(node.target)} in {owner or '<model>'}"


def _tensor_args(args, ids_args):
    return [(a, i) for a, i in zip(args, ids_args, strict=False) if isinstance(a, torch.Tensor)]


def _norm_dims(dims, ndim):
    if dims is None:
        return list(range(ndim))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return [d % ndim for d in dims]


def _reduction(x, ids, args, kwargs, out):
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if not isinstance(dims, (int, list, tuple, type(None))):
        return {}
    keep = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
    gone = set(_norm_dims(dims, x.dim()))
    result, d_out = {}, 0
    for d in range(x.dim()):
        if d in gone and not keep:
            continue
        if d in ids and d not in gone:
            result[d_out] = ids[d]
        d_out += 1
    if isinstance(out, tuple):  # max(dim) -> (values, indices)
        return tuple(dict(result) for _ in out)
    return result


def _matmul(g: Graph, a, ia, b, ib, out, why):
    """a (..., n, k) @ b (..., k, m): the contracted dims are coupled, batch dims broadcast."""
    ia, ib = dims_of(ia), dims_of(ib)
    if a.dim() == 1 or b.dim() == 1:
        for x in list(ia.values()) + list(ib.values()):
            g.fix(x, f"{why}: matmul with a vector")
        return {}
    ka, kb = ia.get(a.dim() - 1), ib.get(b.dim() - 2)
    if ka is not None and kb is not None:
        g.unite(ka, kb)
    elif ka is not None or kb is not None:
        g.fix(ka if ka is not None else kb, f"{why}: contracted with a dim that cannot shrink")
    batch_a = {d: x for d, x in ia.items() if d < a.dim() - 2}
    batch_b = {d: x for d, x in ib.items() if d < b.dim() - 2}
    lead = out.shape[:-2]
    result = broadcast(g, torch.empty(lead, device="meta"),
                       [(torch.empty(a.shape[:-2], device="meta"), batch_a),
                        (torch.empty(b.shape[:-2], device="meta"), batch_b)], why)
    if a.dim() - 2 in ia:
        result[out.dim() - 2] = ia[a.dim() - 2]
    if b.dim() - 1 in ib:
        result[out.dim() - 1] = ib[b.dim() - 1]
    return result


def _cat(g: Graph, tensors, ids_list, dim, out, why):
    dim %= out.dim()
    parts = []
    for t, ids in zip(tensors, ids_list, strict=True):
        x = dims_of(ids).get(dim)
        if x is None:  # an input without channels here: its part keeps its size
            x = g.new(t.shape[dim])
            g.fix(x, f"{why}: concatenated with a part that cannot shrink")
        parts.append(x)
    others = [(t, {d: x for d, x in dims_of(i).items() if d != dim})
              for t, i in zip(tensors, ids_list, strict=True)]
    result = broadcast(g, out, others, why)
    result[dim] = np.concatenate(parts)
    return result


def _split(g: Graph, x, ids, dim, out, why):
    """split/chunk: parts of equal size are coupled position by position, so they shrink alike
    (the fused q|k|v of one Linear); unequal parts of a channel dim are fixed. Returns the parts'
    ids and the first part's ids (None when the dim holds no channels or was fixed)."""
    dim %= x.dim()
    ids = dims_of(ids)
    channel = ids.get(dim)
    lengths = [p.shape[dim] for p in out]
    pieces = []
    if channel is not None:
        if len(set(lengths)) != 1:
            g.fix(channel, f"{why}: unequal split of a channel dim")
        else:
            rows = channel.reshape(len(lengths), lengths[0])
            for row in rows[1:]:
                g.unite(rows[0], row)
            pieces = list(rows)
    result = []
    for k, _ in enumerate(out):
        part = {d: y for d, y in ids.items() if d != dim}
        if channel is not None:
            part[dim] = pieces[k] if pieces else channel[sum(lengths[:k]):sum(lengths[:k + 1])]
        result.append(part)
    return tuple(result), (pieces[0] if pieces else None)


def _shape_args(node_args, real_args):
    """(literal sizes per output dim of a view/reshape, the real sizes)."""
    graph_shape = node_args[1:]
    if len(graph_shape) == 1 and isinstance(graph_shape[0], (tuple, list)):
        graph_shape = graph_shape[0]
    return {j: (s if isinstance(s, int) else None) for j, s in enumerate(graph_shape)}


def propagate_call(ctx, node, args, kwargs, ids_args, out):
    """ids of a call_function / call_method node's output (see module docstring)."""
    g, name, why = ctx.cg, _name(node.target), _where(node)
    if not isinstance(out, (torch.Tensor, tuple, list)) or name in SHAPE_ONLY and not (
            name == "getattr" and args[1] in ("T", "mT")):
        return None
    if name == "getitem":
        if isinstance(args[0], torch.Tensor):
            return indexed(g, dims_of(ids_args[0]), args[0], args[1], why)
        inner = ids_args[0]
        return inner[args[1]] if isinstance(inner, (tuple, list)) else None
    first = ids_args[0] if ids_args else None
    x = args[0] if args else None
    if name in ELEMENTWISE or name in POOLS and isinstance(x, torch.Tensor):
        if name in POOLS:
            return {d: i for d, i in dims_of(first).items() if d < 2}
        if name in ("softmax", "log_softmax") and not isinstance(out, torch.Tensor):
            return None
        return dict(dims_of(first))
    if name in BINARY:
        ops = _tensor_args(args, ids_args)
        return broadcast(g, out, ops, why) if isinstance(out, torch.Tensor) else None
    if name in REDUCTIONS and isinstance(x, torch.Tensor):
        return _reduction(x, dims_of(first), args, kwargs, out)
    return _shape_call(ctx, node, name, why, args, kwargs, ids_args, out)


def _shape_call(ctx, node, name, why, args, kwargs, ids_args, out):
    g = ctx.cg
    x, first = args[0], dims_of(ids_args[0] if ids_args else None)
    if name in ("view", "reshape") and isinstance(x, torch.Tensor):
        result = reshaped(g, first, x.shape, out.shape, why, _shape_args(node.args, args))
        ctx.size_literals(node, result.pop("_sizes", []))
        return result
    if name in ("flatten", "unflatten", "view_as", "reshape_as", "squeeze", "unsqueeze"):
        return reshaped(g, first, x.shape, out.shape, why)
    if name in ("permute", "transpose", "t", "swapaxes", "movedim", "getattr"):
        order = _order(name, x, args, kwargs)
        return permuted(first, order)
    if name in ("expand", "expand_as", "repeat", "tile"):
        result = {}
        for d, y in first.items():
            d_out = d + out.dim() - x.dim()
            reps = out.shape[d_out] // x.shape[d]
            result[d_out] = np.tile(y, reps) if reps > 1 else y
        return result
    if name in ("matmul", "bmm", "mm"):
        return _matmul(g, x, ids_args[0], args[1], ids_args[1], out, why)
    if name in ("cat", "concat", "concatenate", "stack"):
        tensors, ids_list = args[0], ids_args[0] or [None] * len(args[0])
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if name == "stack":
            stacked = [(t.unsqueeze(dim), {d + (d >= dim % out.dim()): y
                                           for d, y in dims_of(i).items()})
                       for t, i in zip(tensors, ids_list, strict=True)]
            return broadcast(g, out, stacked, why)
        return _cat(g, tensors, ids_list, dim, out, why)
    if name in ("split", "chunk", "tensor_split", "unbind"):
        return _split_call(ctx, node, name, why, args, kwargs, ids_args, out)
    if name == "linear":
        return _linear(g, args, ids_args, out, why)
    if name == "scaled_dot_product_attention":
        return _sdpa(g, args, ids_args, out, why)
    return ctx.unknown(why, ids_args)


def _order(name, x, args, kwargs):
    n = x.dim()
    if name == "getattr" or name == "t":
        return list(range(n))[::-1] if name == "t" or args[1] == "T" else (
            list(range(n - 2)) + [n - 1, n - 2])
    if name == "permute":
        dims = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
        return [d % n for d in dims]
    if name in ("transpose", "swapaxes"):
        a, b = args[1] % n, args[2] % n
        order = list(range(n))
        order[a], order[b] = b, a
        return order
    src, dst = (np.atleast_1d(args[1]) % n).tolist(), (np.atleast_1d(args[2]) % n).tolist()
    rest = [d for d in range(n) if d not in src]
    order = [None] * n
    for s, d in zip(src, dst, strict=True):
        order[d] = s
    it = iter(rest)
    return [o if o is not None else next(it) for o in order]


def _split_call(ctx, node, name, why, args, kwargs, ids_args, out):
    g, x = ctx.cg, args[0]
    if name == "unbind":
        dim = (kwargs.get("dim", args[1] if len(args) > 1 else 0)) % x.dim()
        if dim in dims_of(ids_args[0]):
            g.fix(dims_of(ids_args[0])[dim], f"{why}: unbinds a channel dim")
        return tuple({d - (d > dim): y for d, y in dims_of(ids_args[0]).items() if d != dim}
                     for _ in out)
    dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
    result, first = _split(g, x, ids_args[0], dim, out, why)
    if first is not None and name == "split":  # chunk/tensor_split count parts: sizes follow
        written = node.kwargs.get("split_size_or_sections",
                                  node.args[1] if len(node.args) > 1 else None)
        if isinstance(written, int):  # a literal part size: the attribute holding it must follow
            ctx.size_literals(node, [(written, first)])
        elif isinstance(written, (list, tuple)):
            g.fix(first, f"{why}: split sizes written as a list")
    return result


def _linear(g: Graph, args, ids_args, out, why):
    x = args[0]
    ix, iw = dims_of(ids_args[0]), dims_of(ids_args[1])
    xin, win = ix.get(x.dim() - 1), iw.get(1)
    if xin is not None and win is not None:
        g.unite(xin, win)
    elif xin is not None or win is not None:
        g.fix(xin if xin is not None else win, f"{why}: F.linear on a dim that cannot shrink")
    result = {d: y for d, y in ix.items() if d < x.dim() - 1}
    if 0 in iw:
        result[out.dim() - 1] = iw[0]
    if len(args) > 2 and isinstance(args[2], torch.Tensor) and 0 in dims_of(ids_args[2]):
        if 0 in iw:
            g.unite(iw[0], dims_of(ids_args[2])[0])
        else:
            g.fix(dims_of(ids_args[2])[0], f"{why}: bias of a fixed F.linear")
    return result


def _sdpa(g: Graph, args, ids_args, out, why):
    """q, k, v (B, H, T, D): heads coupled across q/k/v; the head dim D never shrinks (its
    size sets the softmax scale), so a channel there makes its whole head one class."""
    q_ids, k_ids, v_ids = (dims_of(i) for i in ids_args[:3])
    n = args[0].dim()
    for ids in (q_ids, k_ids):
        if n - 1 in ids:
            g.fix(ids[n - 1], f"{why}: attention head dim")
    if n - 1 in v_ids:
        g.fix(v_ids[n - 1], f"{why}: attention head dim")
    heads = [ids[n - 3] for ids in (q_ids, k_ids, v_ids) if n - 3 in ids]
    for h in heads[1:]:
        g.unite(heads[0], h)
    return {n - 3: heads[0]} if heads else {}
