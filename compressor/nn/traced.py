"""TracedSequential: a stage that runs inference as one TorchScript graph instead of Python.

In a converted model the Python around each kernel costs as much as a small layer: a
SparseConv2d call spends about 14 us in module dispatch, buffer lookups and checks around a 5 us
kernel launch, and every Identity left where a BatchNorm or activation was fused costs a call too.
A traced stage replays the same ops from one graph (90% pruned, batch 1, 2 threads, AMD EPYC,
medians of 150 alternating calls: ResNet-50 with layer1-4 traced 17.99 -> 17.42 ms, MobileNetV2
with its features and classifier 5.72 -> 4.95 ms). The converter keeps it only where it
measured not slower and gave the same outputs.

A graph is traced on first use for each input signature (shape, strides, dtype, device, chunk size;
at most MAX_SIGNATURES of them) and used only for inference: eval mode for every module inside,
autograd and autocast off, a plain tensor in. Anything else -- training, autograd, tracing by
torch.export / torch.compile / fx / jit -- runs the Sequential as usual, and so does a stage
holding a module of a class not known to replay exactly (GRAPH_SAFE). The graph holds the stage's
tensors themselves, so in-place edits are seen. It is traced again when a tensor or submodule was
replaced or a module's class or mode changed (load_state_dict of another nnz, `.to()`, a swapped
layer: checked on each call), when a module's state derived in Python went stale (a packed power-
of-two layer whose codes were edited in place), and after the stage's `train()`, `.to()` or
`load_state_dict`. While a module inside has a forward hook (or torch has global ones) the modules
run, so that the hooks are called. Plain attributes (strides, an activation's name) are baked into
a graph: call `retrace()` after changing one.
"""

import warnings

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from compressor.nn.chunked import ChunkedSequential
from compressor.nn.fused import ConvAct, FastMaxPool2d, ResidualBlock
from compressor.nn.pow2 import Pow2Conv1d, Pow2Conv2d, Pow2Linear
from compressor.nn.sparse import SparseConv1d, SparseConv2d, SparseLinear
from compressor.nn.sparse_block import SparseBottleneck

# Module classes whose forward makes Python decisions only on shapes, dtypes and attributes
# (which the graph's key or the documented rule covers) and computes everything else with
# torch ops on its own tensors, so that a trace replays it exactly. A stage holding any other
# class (a user's module, whose Python may branch on values or read a tensor as a float, as
# int8 fake-quant layers read their scales) is not traced. Exact classes: a subclass may
# override forward. The power-of-two layers derive their decoded weight in Python: _Graph
# checks it (their _stale()).
GRAPH_SAFE = frozenset({
    nn.Sequential, nn.ModuleList, ChunkedSequential, nn.Identity, nn.Flatten, nn.Dropout,
    nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    SparseConv2d, SparseConv1d, SparseLinear, ConvAct, ResidualBlock, SparseBottleneck,
    FastMaxPool2d,
    Pow2Linear, Pow2Conv2d, Pow2Conv1d,
})


def replays_exactly(module: nn.Module) -> bool:
    """Whether a trace replays `module`'s forward exactly: its class is in GRAPH_SAFE, or says
    so itself with a class attribute `trace_safe = True` (on the class, not inherited: a
    subclass may override forward), as compressor.models' blocks do."""
    return type(module) in GRAPH_SAFE or type(module).__dict__.get("trace_safe") is True


MAX_SIGNATURES = 8  # graphs kept per stage: past that, new input shapes run eagerly
STAGE_ATTRIBUTES = ("chunk", "traced", "_graphs")  # what ChunkedSequential / this class add


def _tracing_already() -> bool:
    """True inside torch.jit or dynamo tracing, which must see the modules, not a graph. (fx and
    dynamo pass Proxy / FakeTensor inputs, which forward already sends to the Sequential.)"""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _hook_dicts(modules: list[nn.Module]) -> list[dict]:
    """The forward-hook dicts whose hooks a graph of a stage would not call: those of the
    modules inside it (`modules`: the stage's, itself first), and torch's global ones
    (nn.modules.module.register_module_forward_hook)."""
    return [d for m in modules[1:] for d in (m._forward_hooks, m._forward_pre_hooks)] + \
        [torch_module._global_forward_hooks, torch_module._global_forward_pre_hooks]


class _Graph:
    """One traced graph and what it was traced from: each (dict, key, value) of the stage's
    children, parameters and buffers and each such dict's size; the modules that derive state
    from their tensors in Python (a packed power-of-two layer's decoded weight: they have
    `_stale()`) and were up to date when traced; and the hook dicts (_hook_dicts)."""

    def __init__(self, modules: list[nn.Module], graph):
        self.graph = graph
        self.modules = modules  # the stage's, itself first
        self.kinds = [(type(m), m.training) for m in self.modules]  # swapped classes, modes
        dicts = [d for m in self.modules for d in (m._modules, m._parameters, m._buffers)]
        self.entries = [(d, k, v) for d in dicts for k, v in d.items()]
        self.sizes = [(d, len(d)) for d in dicts]
        # one stale when traced does not follow its tensors in its mode (a packed layer running
        # on its codes): the graph reads those tensors themselves
        self.derived = [m for m in self.modules
                        if callable(getattr(m, "_stale", None)) and not m._stale()]
        self.hooks = _hook_dicts(modules)

    def current(self) -> bool:
        """True while the stage holds the same children and tensors and no derived state went
        stale (its tensors edited in place: only the module's eager forward, run again by a new
        trace, brings it up to date; other in-place edits the graph sees as they are)."""
        # on every call: 21 us for ResNet-50's layer3, 71 us for MobileNetV2's features
        return [(type(m), m.training) for m in self.modules] == self.kinds and \
            all(len(d) == n for d, n in self.sizes) and \
            all(d.get(k) is v for d, k, v in self.entries) and \
            not any(m._stale() for m in self.derived)

    def hooked(self) -> bool:
        """True while any of the hook dicts holds a hook: then the modules must run."""
        return any(self.hooks)


class TracedSequential(ChunkedSequential):
    """nn.Sequential (chunked or not) that runs inference from a traced graph per input
    signature. `traced = False` turns the graphs off; the module is otherwise the Sequential."""

    traced: bool = True

    @classmethod
    def adopt_(cls, sequential: nn.Sequential, chunk: int | None = None) -> "TracedSequential":
        """Make `sequential` (an nn.Sequential or ChunkedSequential, in place) a
        TracedSequential, keeping its chunk size unless `chunk` is given."""
        super().adopt_(sequential, getattr(sequential, "chunk", 0) if chunk is None else chunk)
        sequential.retrace()
        return sequential

    def retrace(self) -> None:
        """Drop the traced graphs: the next inference call traces again."""
        self.__dict__["_graphs"] = {}

    def _graph_for(self, x: torch.Tensor):
        graphs = self.__dict__.setdefault("_graphs", {})
        key = (tuple(x.shape), x.stride(), x.dtype, x.device, self.chunk)
        found = graphs.get(key)
        if found is None or (found.graph is not None and not found.current()):
            modules = list(self.modules())
            if (any(_hook_dicts(modules))  # a graph traced now would hold no hook
                    or any(m.training for m in modules)  # e.g. BatchNorm recalibrating
                    or (found is None and len(graphs) >= MAX_SIGNATURES)):
                return None
            safe = all(replays_exactly(m) for m in modules[1:])  # [0]: this stage
            found = graphs[key] = _Graph(modules, self._trace(x) if safe else None)
        return None if found.hooked() else found.graph

    def _trace(self, x: torch.Tensor):
        """The stage traced on x (its forward runs eagerly while traced), or None where tracing
        fails (then it stays eager for this signature). The module is traced rather than a
        function: its parameters stay attributes of the graph, shared, not constants."""
        try:
            with warnings.catch_warnings():
                # the trace itself is what we want: its deprecation notice and the tracer's
                # warnings about Python values baked into the graph are expected here
                warnings.simplefilter("ignore")
                # on a copy: tracing runs the forward, and an in-place first layer would
                # otherwise change the caller's tensor twice
                return torch.jit.trace(self, (x.clone(),), check_trace=False)
        except Exception:  # noqa: BLE001 - any untraceable stage simply runs eagerly
            return None

    def forward(self, x):
        if (not self.traced or self.training or torch.is_grad_enabled()
                or type(x) is not torch.Tensor or x.requires_grad or _tracing_already()
                or torch.is_autocast_enabled(x.device.type)):  # a graph holds its dtypes
            return super().forward(x)
        graph = self._graph_for(x)
        return super().forward(x) if graph is None else graph(x)

    def train(self, mode: bool = True):
        self.retrace()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.retrace()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.retrace()
        return super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_graphs", None)  # graphs are made again on first use, not pickled
        return state

    def extra_repr(self) -> str:
        return f"chunk={self.chunk}, traced={self.traced}"
