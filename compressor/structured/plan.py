"""From an analysis to a pruned model: classes and groups, selection, shrinking, checking.

A *group* is the set of prunable classes that touch the same slots (the channels of one layer,
of one residual stream, the heads of one attention): ratios, rounding and layerwise ranking
apply per group. A class is prunable when none of its elements is fixed, it has a producer
(a source slot), and filter_fn accepts every producing module.
"""

import copy
import fnmatch
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.structured.rules import rule_for, take
from compressor.structured.trace import Analysis, planned_shape


@dataclass
class Group:
    name: str
    sources: list[int]  # slot indices producing these channels (they carry the importance)
    slots: list[int]  # every slot the classes touch
    classes: list[int]  # roots, in the order of the first source slot
    width: int  # indices of the first source slot per class


@dataclass
class Plan:
    analysis: Analysis
    roots: list[np.ndarray]  # per slot: the class of every index
    groups: list[Group]
    fixed: dict = field(default_factory=dict)  # root -> reason
    size_attrs: list = field(default_factory=list)  # (owner, attr, ids)


def _size_constraints(a: Analysis) -> list:
    """(owner, attribute, ids) for view/split literals held by one int attribute of their
    module; other literals fix their channels."""
    g, found = a.cg, {}
    for owner, literal, ids, node in g.constraints:
        module = a.modules.get(owner)
        names = [k for k, v in vars(module).items()
                 if type(v) is int and v == literal and not k.startswith("_")] if module else []
        if len(names) != 1:
            g.fix(ids, f"size {literal} written in the code of {owner or '<model>'} (node {node})"
                       " is held by no single int attribute")
            continue
        found.setdefault((owner, names[0]), []).append(ids)
    out = []
    for (owner, attr), all_ids in found.items():
        roots = [g.uf.roots(i) for i in all_ids]
        if any(r.shape != roots[0].shape or (r != roots[0]).any() for r in roots[1:]):
            for i in all_ids:
                g.fix(i, f"{owner}.{attr} sizes dims that do not shrink together")
            continue
        out.append((owner, attr, all_ids[0]))
    return out


def _name(a: Analysis, slot) -> str:
    return slot.module if slot.name == "out" else f"{slot.module}:{slot.name}"


def build_plan(a: Analysis, filter_fn=None) -> Plan:
    g = a.cg
    size_attrs = _size_constraints(a)
    for s in g.slots:  # a ruled module's weight read directly elsewhere: leave the module be
        if s.kind == "param" and rule_for(a.modules.get(s.module, nn.Module())) is not None:
            for t in g.slots:
                if t.module == s.module:
                    g.fix(t.ids, f"{s.module}: its parameters are used outside its forward")
    roots = [g.uf.roots(s.ids) for s in g.slots]
    fixed = {}
    for element, reason in g.fixed.items():
        fixed.setdefault(g.uf.find(element), reason)
    touched: dict[int, list[int]] = {}
    for i, r in enumerate(roots):
        for root in np.unique(r):
            touched.setdefault(int(root), []).append(i)
    signature: dict[tuple, list[int]] = {}
    for root, slots in touched.items():
        sources = [i for i in slots if g.slots[i].source]
        if root in fixed or not sources:
            continue
        if filter_fn is not None and not all(
                filter_fn(a.modules[g.slots[i].module], g.slots[i].module) for i in sources):
            continue
        signature.setdefault(tuple(slots), []).append(root)
    groups = []
    for slots, classes in signature.items():
        sources = sorted((i for i in slots if g.slots[i].source),
                         key=lambda i: (g.order.get(g.slots[i].module, 0), i))
        first = roots[sources[0]]
        order = {}
        for k, root in enumerate(first.tolist()):
            order.setdefault(root, k)
        classes = sorted(classes, key=lambda r: order.get(r, math.inf))
        width = int(np.sum(first == classes[0]))
        groups.append(Group(_name(a, g.slots[sources[0]]), sources, list(slots), classes, width))
    groups.sort(key=lambda grp: (g.order.get(g.slots[grp.sources[0]].module, 0), grp.name))
    return Plan(a, roots, groups, fixed, size_attrs)


def ratio_for(group: Group, plan: Plan, default: float, ratios: dict) -> float:
    members = {group.name} | {plan.analysis.cg.slots[i].module for i in group.sources}
    for pattern, value in ratios.items():
        if any(fnmatch.fnmatchcase(m, pattern) for m in members):
            return value
    return default


def _rounded(keep: int, n: int, multiple: int, width: int) -> int:
    if multiple <= 1 or width != 1 or n < multiple:
        return keep
    return min(n, max(multiple, int(round(keep / multiple)) * multiple))


def select(plan: Plan, scores: dict[int, float], targets: dict[str, int], multiple: int,
           scope: str, floors: dict[str, int] | None = None) -> set[int]:
    """Roots to remove so that each group keeps targets[name] classes (layerwise), or, global,
    the lowest-scored classes over all groups until sum(targets) remain (channel-weighted),
    no group going below floors[name] classes."""
    removed = set()
    if scope == "global":
        total_keep = sum(targets[grp.name] * grp.width for grp in plan.groups)
        ranked = sorted(((scores[r], grp.name, r, grp.width) for grp in plan.groups
                         for r in grp.classes), key=lambda t: t[0])
        kept_channels = sum(len(grp.classes) * grp.width for grp in plan.groups)
        drop: dict[str, set] = {grp.name: set() for grp in plan.groups}
        floors = floors or {}
        quota = {grp.name: len(grp.classes) - floors.get(grp.name, 1) for grp in plan.groups}
        for _, name, root, width in ranked:
            if kept_channels - width < total_keep:
                break
            if len(drop[name]) >= quota[name]:
                continue
            drop[name].add(root)
            kept_channels -= width
        targets = {grp.name: len(grp.classes) - len(drop[grp.name]) for grp in plan.groups}
    for grp in plan.groups:
        n = len(grp.classes)
        keep = _rounded(targets[grp.name], n, multiple, grp.width)
        if keep <= 0:
            raise CompressorError(
                f"structured pruning would remove every channel of group {grp.name!r} "
                f"({n * grp.width} channels); lower StructuredConfig.ratio or leave the group "
                "out with filter_fn")
        order = sorted(grp.classes, key=lambda r: scores[r])
        removed.update(order[:n - keep])
    return removed


def keep_masks(plan: Plan, removed: set[int]) -> list[np.ndarray]:
    lookup = np.array(sorted(removed), dtype=np.int64)
    return [~np.isin(r, lookup) for r in plan.roots]


def apply(model: nn.Module, plan: Plan, removed: set[int]) -> tuple[nn.Module, dict]:
    """A pruned deep copy of `model` and {slot key: kept indices}; `model` is unchanged."""
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    masks = keep_masks(plan, removed)
    g = plan.analysis.cg
    per_module: dict[str, dict] = {}
    kept = {}
    for s, keep in zip(g.slots, masks, strict=True):
        if not keep.all():
            kept[s.key] = np.flatnonzero(keep).tolist()
        per_module.setdefault(s.module, {})[s.name] = keep
    for fqn, keeps in per_module.items():
        if all(k.all() for k in keeps.values()):
            continue
        module = modules[fqn]
        rule = rule_for(module)
        rule_keeps = {k: v for k, v in keeps.items() if not k.startswith("param:")}
        if rule is not None and rule_keeps:
            new = rule.shrink(module, rule_keeps)
            _replace(pruned, fqn, new)
            module = new
        for key, keep in keeps.items():
            if key.startswith("param:") and not keep.all():
                _, attr, dim = key.split(":")
                idx = np.flatnonzero(keep)
                take(module, attr, lambda t, d=int(dim), i=idx: t.index_select(
                    d, torch.as_tensor(i, dtype=torch.long, device=t.device)))
    changed = {}
    for owner, attr, ids in plan.size_attrs:
        value = int(sum(1 for e in ids.tolist() if g.uf.find(int(e)) not in removed))
        if value != getattr(modules[owner], attr):
            setattr(dict(pruned.named_modules())[owner], attr, value)
            changed[f"{owner}.{attr}" if owner else attr] = value
    return pruned, {"kept": kept, "attributes": changed}


def _replace(model: nn.Module, fqn: str, new: nn.Module) -> None:
    if not fqn:
        raise CompressorError("structured pruning: the model itself is a single layer; wrap it "
                              "in a container module")
    parent, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def verify(plan: Plan, removed: set[int], pruned_run: Analysis) -> None:
    """Every node of the pruned model must have exactly the planned shape."""
    g = plan.analysis.cg
    keep = lambda e: g.uf.find(e) not in removed  # noqa: E731
    dense = plan.analysis.shapes
    got = pruned_run.shapes
    if set(dense) != set(got):
        missing = sorted(set(dense) ^ set(got))[:3]
        raise CompressorError(f"structured pruning: the pruned model traces to a different graph "
                              f"(nodes {missing}); its forward depends on channel counts")
    for name, (shape, ids) in dense.items():
        want = _planned(shape, ids, keep)
        if want != got[name][0]:
            raise CompressorError(
                f"structured pruning: node {name} of the pruned model has shape {got[name][0]}, "
                f"expected {want}; a size in the model's code does not follow the pruned "
                "channels (list that module in StructuredConfig.leaf_modules)")


def _planned(shape, ids, keep):
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return planned_shape(shape, ids, keep)
    if isinstance(shape, (tuple, list)):
        sub = ids if isinstance(ids, (tuple, list)) else [None] * len(shape)
        return type(shape)(_planned(s, i, keep) for s, i in zip(shape, sub, strict=False))
    return shape
