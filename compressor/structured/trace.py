"""Trace a model with torch.fx and run it once on the example inputs, carrying channel ids.

Modules with a rule (rules.py), compressor.nn modules and the user's `leaf_modules` are leaves;
everything else is traced through. Running the graph (an fx.Interpreter) gives every op its real
arguments (shapes, slice bounds, split sizes) next to the channel ids of its tensor inputs.
"""

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from compressor.errors import CompressorError
from compressor.structured.graph import Graph
from compressor.structured.ops import _name, propagate_call
from compressor.structured.rules import AttentionRule, LSTMRule, ONLSTMRule, rule_for, unsupported
from compressor.structured.shapes import dims_of, reshaped

PASSTHROUGH = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU,
               nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout1d,
               nn.Dropout2d, nn.AlphaDropout, nn.Identity, nn.Softmax, nn.LogSoftmax)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
         nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Upsample)


class _Tracer(fx.Tracer):
    def __init__(self, leaves):
        super().__init__()
        self.leaves, self.path, self.failed_at = set(leaves), [], None

    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return (name in self.leaves or rule_for(m) is not None
                or type(m).__module__.startswith("compressor.nn")
                or super().is_leaf_module(m, name))

    def call_module(self, m, forward, args, kwargs):
        self.path.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.path[-1]
            raise
        finally:
            self.path.pop()


def trace(model: nn.Module, leaves=()) -> fx.GraphModule:
    """The fx graph of model; a failure names the innermost submodule being traced."""
    tracer = _Tracer(leaves)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        name, kind = tracer.failed_at or ("", type(model).__name__)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CompressorError(
            f"structured pruning cannot trace submodule {name or '<model>'!r} ({kind}) with "
            f"torch.fx: {first}; add it to StructuredConfig.leaf_modules to keep its channels "
            "as they are") from None
    return fx.GraphModule(model, graph, type(model).__name__)


def _structure(out, fn):
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, (tuple, list)) and not isinstance(out, torch.Size):
        items = [_structure(o, fn) for o in out]
        return items if isinstance(out, list) else tuple(items)
    return None


def _all_ids(ids):
    if isinstance(ids, dict):
        yield from (v for k, v in ids.items() if not isinstance(k, str))
    elif isinstance(ids, (tuple, list)):
        for item in ids:
            yield from _all_ids(item)


class Analysis(fx.Interpreter):
    """Runs the graph; afterwards `graph` holds elements and slots, `shapes` every node's
    output shape and channel ids (to check the pruned model against)."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module):
        super().__init__(gm)
        self.model, self.cg = model, Graph()
        self.modules = dict(model.named_modules())
        self.ids, self.shapes, self.params, self.called = {}, {}, {}, set()
        self.current = None

    def run_node(self, n):
        self.current = n
        out = super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        ids_args = fx.node.map_arg(n.args, lambda a: self.ids.get(a))
        ids_kwargs = fx.node.map_arg(n.kwargs, lambda a: self.ids.get(a))
        self.ids[n] = self._propagate(n, args, kwargs, ids_args, ids_kwargs, out)
        ids = self.ids[n]
        self.shapes[n.name] = _structure(out, lambda t: tuple(t.shape)), ids
        return out

    # ----- helpers the rules and ops call
    def state_used(self) -> bool:
        return any(u.op == "call_function" and _name(u.target) == "getitem" and u.args[1] != 0
                   for u in self.current.users)

    def size_literals(self, node, pairs) -> None:
        stack = node.meta.get("nn_module_stack") or {}
        owner = next(reversed(stack), "") if stack else ""
        for literal, ids in pairs:
            self.cg.constraints.append((owner, literal, ids, node.name))

    def unknown(self, why: str, ids_args) -> dict:
        touched = list(_all_ids(ids_args))
        for x in touched:
            self.cg.fix(x, f"{why}: no rule for this op")
        if touched:
            self.cg.skip(why, "no structured-pruning rule; the channels it sees are kept")
        return {}

    # ----- dispatch
    def _propagate(self, n, args, kwargs, ids_args, ids_kwargs, out):
        if n.op == "placeholder":
            return _structure(out, lambda t: {})
        if n.op == "get_attr":
            return self._param(n.target, out)
        if n.op == "output":
            for x in _all_ids(ids_args):
                self.cg.fix(x, "model output")
            return None
        if n.op == "call_module":
            return self._module(n.target, args, kwargs, ids_args, ids_kwargs, out)
        return propagate_call(self, n, args, kwargs, ids_args, out)

    def _param(self, target: str, value):
        if target in self.params or not isinstance(value, torch.Tensor):
            return self.params.get(target, {})
        owner, _, attr = target.rpartition(".")
        ids = {}
        for d, size in enumerate(value.shape):
            if size > 1:
                ids[d] = self.cg.new(size)
                self.cg.slot(owner, f"param:{attr}:{d}", ids[d], kind="param")
        self.params[target] = ids
        return ids

    def _module(self, fqn, args, kwargs, ids_args, ids_kwargs, out):
        m, g = self.modules[fqn], self.cg
        first = ids_args[0] if ids_args else None
        rule = rule_for(m)
        stateless = rule is None and not any(True for _ in m.parameters())
        if fqn in self.called and not stateless:
            for s in g.slots:
                if s.module == fqn:
                    g.fix(s.ids, f"{fqn}: module called more than once")
            return self.unknown(f"{fqn} ({type(m).__name__}) called more than once", ids_args)
        self.called.add(fqn)
        if rule is not None and unsupported(m) is None:
            return self._ruled(rule, fqn, m, args, kwargs, ids_args, ids_kwargs, out)
        if isinstance(m, PASSTHROUGH):
            return dict(dims_of(first))
        if isinstance(m, POOLS):
            return {d: y for d, y in dims_of(first).items() if d < 2}
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return reshaped(g, dims_of(first), args[0].shape, out.shape, fqn)
        reason = unsupported(m) or f"no structured-pruning rule for {type(m).__name__}"
        touched = list(_all_ids(ids_args)) + list(_all_ids(ids_kwargs))
        for x in touched:
            g.fix(x, f"{fqn}: {reason}")
        if any(True for _ in m.parameters()) or touched:
            g.skip(fqn, reason)
        return _structure(out, lambda t: {})

    def _ruled(self, rule, fqn, m, args, kwargs, ids_args, ids_kwargs, out):
        if isinstance(rule, AttentionRule):
            names = ("query", "key", "value")
            ids = [ids_args[k] if k < len(ids_args) else ids_kwargs.get(names[k])
                   for k in range(3)]
            return rule.analyse(self, fqn, m, *ids, out)
        if isinstance(rule, (LSTMRule, ONLSTMRule)):
            result = rule.analyse(self, fqn, m, ids_args[0], out)
            if len(args) > 1 and args[1] is not None or kwargs.get("hx") is not None:
                for s in self.cg.slots:
                    if s.module == fqn and s.name.startswith("hidden"):
                        self.cg.fix(s.ids, f"{fqn}: an initial state is passed in")
            return result
        return rule.analyse(self, fqn, m, ids_args[0], out)


def analyse(model: nn.Module, example_inputs: tuple, leaves=()) -> Analysis:
    """Trace and run `model` (eval mode, no grad; its mode is restored)."""
    gm = trace(model, leaves)
    run = Analysis(gm, model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run.run(*example_inputs)
    except CompressorError:
        raise
    except Exception as exc:
        node = run.current.name if run.current is not None else "?"
        raise CompressorError(f"structured pruning: running the traced model failed at node "
                              f"{node}: {type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        model.train(was_training)
    return run


def planned_shape(shape, ids, keep_element) -> tuple:
    """The shape a node's output must have once `keep_element` (root -> bool) is applied."""
    shape = list(shape)
    for d, x in dims_of(ids).items():
        if isinstance(d, int):
            shape[d] = int(sum(1 for e in np.asarray(x) if keep_element(int(e))))
    return tuple(shape)
