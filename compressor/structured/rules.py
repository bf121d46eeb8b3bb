"""Per-layer rules: which dims of a module hold channels, how they couple, how to shrink it.

A rule's `analyse` registers the module's slots and returns its output's channel ids;
`shrink(module, keep)` returns the smaller module (keep: slot name -> bool per index), with
every size stored in the module's own attributes; `unit_sums(module, slot, fn)` sums fn(param)
over the weights of each index of a source slot (L1 and weight-Taylor); `gate(slot)` says where
the slot's channels appear in the module's output (output index, channel dim, batch dim) for
activation Taylor, or None.
"""

import copy

import numpy as np
import torch
from torch import nn

from compressor.nn import ONLSTM, Pow2GRU, Pow2LSTM, Pow2RNN
from compressor.pruning.masks import MASK_SUFFIX
from compressor.structured.attention import PrunableMultiheadAttention
from compressor.structured.shapes import dims_of


def _index(keep) -> torch.Tensor:
    return torch.from_numpy(np.flatnonzero(keep)).long()


@torch.no_grad()
def take(module: nn.Module, name: str, fn) -> None:
    """Replace parameter or buffer `name` by fn(it), and its unstructured mask alike."""
    for key in (name, name + MASK_SUFFIX):
        if module._parameters.get(key) is not None:
            old = module._parameters[key]
            module._parameters[key] = nn.Parameter(fn(old.detach()).clone(),
                                                   requires_grad=old.requires_grad)
        elif module._buffers.get(key) is not None:
            module._buffers[key] = fn(module._buffers[key]).clone()


class Rule:
    kinds: dict = {}  # slot name -> slot kind ('weight', 'norm', 'head', 'consumer')

    def gate(self, module, slot: str):
        return None


class ConvRule(Rule):
    """Conv1d/Conv2d. Grouped and depthwise convs: each conv group's input and output channels
    are one class (a depthwise conv's channel j follows its input channel j)."""

    def analyse(self, ctx, fqn, m, x_ids, out):
        g = ctx.cg
        ids_in = dims_of(x_ids).get(1)
        out_ids = g.new(m.out_channels)
        g.slot(fqn, "out", out_ids, source=True, kind="weight")
        if m.groups > 1:
            if ids_in is None:
                g.fix(out_ids, f"{fqn}: grouped conv on an input that cannot shrink")
            else:
                a, b = m.in_channels // m.groups, m.out_channels // m.groups
                for k in range(m.groups):
                    g.unite_all(np.concatenate([ids_in[k * a:(k + 1) * a],
                                                out_ids[k * b:(k + 1) * b]]))
        if ids_in is not None:
            g.slot(fqn, "in", ids_in)
        for d, y in dims_of(x_ids).items():
            if d != 1:
                g.fix(y, f"{fqn}: channels in a spatial dim")
        return {1: out_ids}

    def shrink(self, m, keep):
        new = copy.deepcopy(m)
        k_out = keep["out"]
        k_in = keep.get("in", np.ones(m.in_channels, bool))
        take(new, "weight", lambda w: w[_index(k_out)])
        if m.groups == 1:
            take(new, "weight", lambda w: w[:, _index(k_in)])
        else:
            new.groups = int(k_out.sum()) // (m.out_channels // m.groups)
        if m.bias is not None:
            take(new, "bias", lambda b: b[_index(k_out)])
        new.in_channels, new.out_channels = int(k_in.sum()), int(k_out.sum())
        return new

    def unit_sums(self, m, slot, fn):
        return fn("weight", m.weight).flatten(1).sum(1) + (
            fn("bias", m.bias) if m.bias is not None else 0)

    def gate(self, m, slot):
        return (None, 1, 0)


class LinearRule(Rule):
    def analyse(self, ctx, fqn, m, x_ids, out):
        g, ids = ctx.cg, dims_of(x_ids)
        last = out.dim() - 1
        if last in ids:
            g.slot(fqn, "in", ids[last])
        out_ids = g.new(m.out_features)
        g.slot(fqn, "out", out_ids, source=True, kind="weight")
        return {**{d: y for d, y in ids.items() if d != last}, last: out_ids}

    def shrink(self, m, keep):
        new = copy.deepcopy(m)
        k_out = keep["out"]
        k_in = keep.get("in", np.ones(m.in_features, bool))
        take(new, "weight", lambda w: w[_index(k_out)][:, _index(k_in)])
        if m.bias is not None:
            take(new, "bias", lambda b: b[_index(k_out)])
        new.in_features, new.out_features = int(k_in.sum()), int(k_out.sum())
        return new

    def unit_sums(self, m, slot, fn):
        return fn("weight", m.weight).sum(1) + (fn("bias", m.bias) if m.bias is not None else 0)

    def gate(self, m, slot):
        return (None, -1, 0)


class EmbeddingRule(Rule):
    def analyse(self, ctx, fqn, m, x_ids, out):
        out_ids = ctx.cg.new(m.embedding_dim)
        ctx.cg.slot(fqn, "out", out_ids, source=True, kind="weight")
        return {out.dim() - 1: out_ids}

    def shrink(self, m, keep):
        new = copy.deepcopy(m)
        take(new, "weight", lambda w: w[:, _index(keep["out"])])
        new.embedding_dim = int(keep["out"].sum())
        return new

    def unit_sums(self, m, slot, fn):
        return fn("weight", m.weight).sum(0)

    def gate(self, m, slot):
        return (None, -1, 0)


class NormRule(Rule):
    """BatchNorm (channels at dim 1), LayerNorm over the last dim, GroupNorm (each group of
    channels is one class, so the groups stay whole)."""

    def analyse(self, ctx, fqn, m, x_ids, out):
        ids = dims_of(x_ids)
        if isinstance(m, nn.LayerNorm):
            dim = out.dim() - 1
            if len(m.normalized_shape) != 1:
                for y in ids.values():
                    ctx.cg.fix(y, f"{fqn}: LayerNorm over several dims")
                return dict(ids)
        else:
            dim = 1
        if dim in ids:
            if isinstance(m, nn.GroupNorm):
                size = m.num_channels // m.num_groups
                for k in range(m.num_groups):
                    ctx.cg.unite_all(ids[dim][k * size:(k + 1) * size])
            ctx.cg.slot(fqn, "channels", ids[dim], kind="norm")
        return dict(ids)

    def shrink(self, m, keep):
        new = copy.deepcopy(m)
        k = keep["channels"]
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(new, name, None) is not None:
                take(new, name, lambda t: t[_index(k)])
        n = int(k.sum())
        if isinstance(m, nn.LayerNorm):
            new.normalized_shape = (n,)
        elif isinstance(m, nn.GroupNorm):
            new.num_groups = n // (m.num_channels // m.num_groups)
            new.num_channels = n
        else:
            new.num_features = n
        return new

    def scale(self, m):
        return None if m.weight is None else m.weight.detach().abs()


def _gate_rows(hidden: int, gates: int, keep_units) -> torch.Tensor:
    """Row indices of kept units in `gates` stacked blocks of `hidden` rows."""
    units = np.flatnonzero(keep_units)
    return torch.from_numpy(np.concatenate([k * hidden + units for k in range(gates)])).long()


class LSTMRule(Rule):
    """nn.LSTM (one direction, no projection): each layer's hidden units are a slot; rows of
    the four gates, the recurrent columns and the next layer's input columns follow a unit."""

    def analyse(self, ctx, fqn, m, x_ids, out, hx_ids=None):
        g = ctx.cg
        ids = dims_of(x_ids)
        last = out[0].dim() - 1
        prev = ids.get(last)
        hidden = []
        for k in range(m.num_layers):
            if prev is not None:
                g.slot(fqn, f"in_l{k}", prev)
            h = g.new(m.hidden_size)
            g.slot(fqn, f"hidden_l{k}", h, source=True, kind="weight")
            hidden.append(h)
            prev = h
        if ctx.state_used():
            for h in hidden[1:]:
                g.unite(hidden[0], h)
        state = {out[1][0].dim() - 1: hidden[0]}
        return ({**{d: y for d, y in ids.items() if d != last}, last: hidden[-1]},
                (dict(state), dict(state)))

    def shrink(self, m, keep):
        new = copy.deepcopy(m)
        n_in = m.input_size
        for k in range(m.num_layers):
            k_h = keep[f"hidden_l{k}"]
            k_in = keep.get(f"in_l{k}", np.ones(n_in if k == 0 else m.hidden_size, bool))
            rows, cols_in, cols_h = _gate_rows(m.hidden_size, 4, k_h), _index(k_in), _index(k_h)
            take(new, f"weight_ih_l{k}", lambda w, r=rows, c=cols_in: w[r][:, c])
            take(new, f"weight_hh_l{k}", lambda w, r=rows, c=cols_h: w[r][:, c])
            for b in (f"bias_ih_l{k}", f"bias_hh_l{k}"):
                if getattr(new, b, None) is not None:
                    take(new, b, lambda t, r=rows: t[r])
            if k == 0:
                new.input_size = int(k_in.sum())
        new.hidden_size = int(keep["hidden_l0"].sum())
        new._init_flat_weights()
        return new

    def unit_sums(self, m, slot, fn):
        k, h = int(slot.rsplit("l", 1)[1]), m.hidden_size
        total = 0
        for name in (f"weight_ih_l{k}", f"weight_hh_l{k}", f"bias_ih_l{k}", f"bias_hh_l{k}"):
            p = getattr(m, name, None)
            if p is not None:
                total = total + fn(name, p).reshape(4, h, -1).sum((0, 2))
        return total

    def gate(self, m, slot):
        if slot != f"hidden_l{m.num_layers - 1}":
            return None
        return (0, -1, 0 if m.batch_first else 1)


class ONLSTMRule(Rule):
    """compressor.nn.ONLSTM: whole chunks are removed (their C hidden units, their two master
    gate logits), so the cumax over chunks stays well defined. Gate rows per layer:
    [master input (m) | master forget (m) | o | c | i | f (each D = m * C, unit-major)]."""

    def analyse(self, ctx, fqn, m, x_ids, out, hx_ids=None):
        g, ids = ctx.cg, dims_of(x_ids)
        prev, c = ids.get(2), m.chunk_size
        states = []
        for k in range(m.num_layers):
            if prev is not None:
                g.slot(fqn, f"in_l{k}", prev)
            h = g.new(m.hidden_size)
            for q in range(m.hidden_size // c):
                g.unite_all(h[q * c:(q + 1) * c])
            g.slot(fqn, f"hidden_l{k}", h, source=True, kind="weight")
            states.append(({1: h}, {1: h}))
            prev = h
        outputs = {**{d: y for d, y in ids.items() if d != 2}, 2: prev}
        return (outputs, states, ({}, {}))

    def _rows(self, m, keep_units):
        d, c = m.hidden_size, m.chunk_size
        chunks = np.flatnonzero(keep_units.reshape(-1, c).all(1))
        units = np.flatnonzero(keep_units)
        n = d // c
        rows = [chunks, n + chunks] + [2 * n + k * d + units for k in range(4)]
        return torch.from_numpy(np.concatenate(rows)).long()

    def shrink(self, m, keep):
        new = copy.deepcopy(m)
        for k in range(m.num_layers):
            k_h = keep[f"hidden_l{k}"]
            k_in = keep.get(f"in_l{k}", np.ones(m.input_size if k == 0 else m.hidden_size, bool))
            rows, cols_in, cols_h = self._rows(m, k_h), _index(k_in), _index(k_h)
            take(new, f"weight_ih_l{k}", lambda w, r=rows, c=cols_in: w[r][:, c])
            take(new, f"weight_hh_l{k}", lambda w, r=rows, c=cols_h: w[r][:, c])
            for b in (f"bias_ih_l{k}", f"bias_hh_l{k}"):
                take(new, b, lambda t, r=rows: t[r])
            if k == 0:
                new.input_size = int(k_in.sum())
        new.hidden_size = int(keep["hidden_l0"].sum())
        return new

    def unit_sums(self, m, slot, fn):
        k, d, c = int(slot.rsplit("l", 1)[1]), m.hidden_size, m.chunk_size
        n = d // c
        total = 0
        for name in (f"weight_ih_l{k}", f"weight_hh_l{k}", f"bias_ih_l{k}", f"bias_hh_l{k}"):
            v = fn(name, getattr(m, name)).reshape(4 * d + 2 * n, -1).sum(1)
            master = (v[:n] + v[n:2 * n]).repeat_interleave(c) / c
            total = total + v[2 * n:].reshape(4, d).sum(0) + master
        return total

    def gate(self, m, slot):
        if slot != f"hidden_l{m.num_layers - 1}":
            return None
        return (0, -1, 0 if m.batch_first else 1)


class AttentionRule(Rule):
    """PrunableMultiheadAttention: input features (shared by the packed q/k/v projections, so
    query, key and value channels are coupled), heads, and output features."""

    def analyse(self, ctx, fqn, m, q_ids, k_ids, v_ids, out):
        g = ctx.cg
        ins = [dims_of(i).get(out[0].dim() - 1) for i in (q_ids, k_ids, v_ids)]
        present = [x for x in ins if x is not None]
        if present and len(present) < 3:
            for x in present:
                g.fix(x, f"{fqn}: query/key/value channels where one input cannot shrink")
        for x in present[1:]:
            g.unite(present[0], x)
        if present:
            g.slot(fqn, "in", present[0])
        heads = g.new(m.num_heads)
        g.slot(fqn, "heads", heads, source=True, kind="weight")
        out_ids = g.new(m.out_dim)
        g.slot(fqn, "out", out_ids, source=True, kind="weight")
        last = out[0].dim() - 1
        q = dims_of(q_ids)
        return ({**{d: y for d, y in q.items() if d != last}, last: out_ids}, None)

    def shrink(self, m, keep):
        k_heads = keep["heads"]
        k_in = keep.get("in", np.ones(m.in_dim, bool))
        k_out = keep["out"]
        new = PrunableMultiheadAttention(int(k_in.sum()), int(k_heads.sum()), m.head_dim,
                                         int(k_out.sum()), bias=m.in_proj_bias is not None,
                                         dropout=m.dropout, batch_first=m.batch_first)
        inner = np.repeat(k_heads, m.head_dim)
        rows = _gate_rows(m.num_heads * m.head_dim, 3, inner)
        state = {"in_proj_weight": m.in_proj_weight.detach()[rows][:, _index(k_in)],
                 "out_proj.weight": m.out_proj.weight.detach()[_index(k_out)][:, _index(inner)]}
        if m.in_proj_bias is not None:
            state["in_proj_bias"] = m.in_proj_bias.detach()[rows]
            state["out_proj.bias"] = m.out_proj.bias.detach()[_index(k_out)]
        new.load_state_dict(state, strict=True)
        return new.train(m.training)

    def unit_sums(self, m, slot, fn):
        h, d = m.num_heads, m.head_dim
        if slot == "out":
            return fn("out_proj.weight", m.out_proj.weight).sum(1) + (
                fn("out_proj.bias", m.out_proj.bias) if m.out_proj.bias is not None else 0)
        total = fn("in_proj_weight", m.in_proj_weight).reshape(3, h, d, -1).sum((0, 2, 3))
        if m.in_proj_bias is not None:
            total = total + fn("in_proj_bias", m.in_proj_bias).reshape(3, h, d).sum((0, 2))
        return total + fn("out_proj.weight", m.out_proj.weight).reshape(-1, h, d).sum((0, 2))

    def gate(self, m, slot):
        if slot == "heads":
            return ("head_gate", 1, 0)
        return (0, -1, 0 if m.batch_first else 1)


CONV, LINEAR, EMBEDDING, NORM = ConvRule(), LinearRule(), EmbeddingRule(), NormRule()
RULES = [((nn.Conv1d, nn.Conv2d), CONV), ((nn.Linear,), LINEAR), ((nn.Embedding,), EMBEDDING),
         ((nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm), NORM),
         ((nn.LSTM,), LSTMRule()), ((ONLSTM,), ONLSTMRule()),
         ((PrunableMultiheadAttention,), AttentionRule())]


def rule_for(module: nn.Module) -> Rule | None:
    for types, rule in RULES:
        if isinstance(module, types):
            return rule
    return None


def unsupported(module: nn.Module) -> str | None:
    """Why a module of a ruled type still cannot be pruned, or None."""
    if isinstance(module, (Pow2LSTM, Pow2GRU, Pow2RNN)):
        return "packed power-of-two weights (prune channels before quantizing)"
    if isinstance(module, nn.LSTM) and (module.bidirectional or module.proj_size):
        return "bidirectional or projected nn.LSTM"
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
        return "LayerNorm over several dims"
    return None
