"""The channel dependency graph: elements, their coupling, and where each one lives.

An *element* is one channel of one producer (a conv filter, a Linear output row, an embedding
column, an LSTM hidden unit, a head, a raw parameter's index). Every tensor in the traced graph
carries, for each of its dims that holds channels, the element id of every index along that dim
(`Ids`: dim -> int array); an element can appear at many indices (flatten -> Linear repeats a
channel over H*W columns). Ops couple elements (a residual add unites the two operands' channels)
with a union-find; a *class* (a union-find set) is what pruning removes together. A *slot* is one
dim of one module's tensors indexed by elements: removing a class removes its indices from
every slot.
"""

from dataclasses import dataclass, field

import numpy as np


class UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def add(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the older element stays the root

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter((self.find(int(i)) for i in ids.ravel()), np.int64,
                           ids.size).reshape(ids.shape)


@dataclass
class Slot:
    """One dim of one module's tensors, indexed by elements.

    module: the owner's qualified name; name: the rule's name for this dim ('out', 'in',
    'hidden_l0', ...); ids: element of every index; source: whether these elements are produced
    here (they carry the importance); kind: 'weight' (filters/rows: L1, Taylor), 'norm'
    (BN/LN/GN scales), 'param' (a raw parameter sliced along a dim) or 'consumer' (input dims).
    """

    module: str
    name: str
    ids: np.ndarray
    source: bool = False
    kind: str = "consumer"

    @property
    def key(self) -> str:
        return f"{self.module}:{self.name}"


@dataclass
class Graph:
    """Elements, slots and why some elements may not be removed."""

    uf: UnionFind = field(default_factory=UnionFind)
    slots: list[Slot] = field(default_factory=list)
    fixed: dict[int, str] = field(default_factory=dict)  # element -> first reason
    skipped: dict[str, str] = field(default_factory=dict)  # layer/op -> reason it is untouched
    order: dict[str, int] = field(default_factory=dict)  # module -> first use in the graph
    size_attrs: list = field(default_factory=list)  # (module, attribute, ids) set from sizes
    constraints: list = field(default_factory=list)  # (ids, reason): keep unless attr known

    def new(self, n: int) -> np.ndarray:
        return self.uf.add(n)

    def slot(self, module: str, name: str, ids: np.ndarray, source: bool = False,
             kind: str = "consumer") -> Slot:
        out = Slot(module, name, np.asarray(ids, dtype=np.int64), source, kind)
        self.slots.append(out)
        self.order.setdefault(module, len(self.order))
        return out

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(np.asarray(a).ravel(), np.asarray(b).ravel(), strict=True):
            self.uf.union(int(x), int(y))

    def unite_all(self, ids: np.ndarray) -> None:
        """One class for all of ids (a head, a norm group, a conv group)."""
        flat = np.asarray(ids).ravel()
        for x in flat[1:]:
            self.uf.union(int(flat[0]), int(x))

    def fix(self, ids, reason: str) -> None:
        for x in np.asarray(ids).ravel():
            self.fixed.setdefault(int(x), reason)

    def skip(self, what: str, reason: str) -> None:
        self.skipped.setdefault(what, reason)
