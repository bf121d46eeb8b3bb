"""compressor.sparse.convert: swap pruned Conv1d / Conv2d / Linear layers for sparse ones where it
pays.

Per layer, the sparse layer, with what it can fuse (compressor.sparse.fusion: BatchNorm folded,
activation and residual add in the epilogue), is timed against the dense ops it replaces, with
interleaved samples (PerfModel); it is taken when measured at least `min_speedup` faster. Then
the whole converted model is timed against the original, interleaved too, and while it is slower
the swaps with the smallest gains are undone. Residual blocks made of three sparse convs (ResNet's
bottleneck) may then run as one fused op each (SparseBottleneck), and the model's stages
(outermost Sequentials over the batch) run a batch in chunks (ChunkedSequential) and replay
inference from traced graphs (TracedSequential), each kept only where measured to pay. The
original model is never modified.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.graph import replace_module
from compressor.nn.chunked import ChunkedSequential
from compressor.nn.fused import FastMaxPool2d, ResidualBlock
from compressor.nn.sparse_block import SparseBottleneck, bottleneck_mismatch
from compressor.nn.traced import STAGE_ATTRIBUTES, TracedSequential
from compressor.ops._dispatch import has_kernel
from compressor.ops.reference import activate
from compressor.sparse.fusion import Plan, Slot, apply, make_plan, sparse_module
from compressor.sparse.perf_model import PerfModel
from compressor.timing import paired_medians


@dataclass
class Decision:
    name: str           # the layer's path in the original model
    sparsity: float
    dense_ms: float     # the dense ops the sparse layer replaces (conv, BN, add, activation)
    sparse_ms: float    # the sparse layer with them fused (fastest interleaved samples)
    converted: bool
    fused: str = ""     # what the sparse layer absorbs, e.g. "bn+add+relu"
    spread: float = 0.0  # relative spread (IQR / median) of the timings

    @property
    def speedup(self) -> float:
        return self.dense_ms / max(self.sparse_ms, 1e-12)


class Decisions(list):
    """The per-layer decisions, plus the whole-model check (ms, original and converted) and the
    max-pools swapped for FastMaxPool2d ({path: (ms before, ms after)})."""

    dense_ms: float | None = None
    blocks: dict | None = None  # what _fuse_blocks kept
    chunks: dict | None = None  # what _chunk_batches kept
    traced: dict | None = None  # what _trace_stages kept
    converted_ms: float | None = None
    pools: dict | None = None

    def whole_model(self) -> dict:
        """The whole-model facts, as whole_model_lines reads them (and sparsify_ records)."""
        return {"dense_ms": self.dense_ms, "converted_ms": self.converted_ms,
                "blocks": self.blocks or {}, "chunks": self.chunks or {},
                "traced": self.traced or {}}


def _faster_pools(model, pools: dict, min_speedup: float) -> dict:
    """{path: (ms, FastMaxPool2d ms)} of the max-pools measured faster as FastMaxPool2d."""
    faster = {}
    for name, (x, _) in pools.items():
        if x.dim() != 4:
            continue
        plain = model.get_submodule(name)
        fast = FastMaxPool2d.from_pool(plain)
        with torch.no_grad():
            paired = paired_medians([lambda: plain(x), lambda: fast(x)], x.device.type,  # noqa: B023
                                    warmup=1, repeat=5, min_seconds=0.002)
        before, after = (min(s) for s in paired.samples)
        if before >= min_speedup * after:
            faster[name] = (before * 1e3, after * 1e3)
    return faster


def convertible(module: nn.Module) -> bool:
    """A Conv1d / Conv2d / Linear, or a subclass that keeps its base's forward (torch's
    NonDynamicallyQuantizableLinear): its computation is the base's, so the sparse twin is
    exact. A subclass with its own forward is left alone."""
    return any(isinstance(module, base) and type(module).forward is base.forward
               for base in (nn.Conv1d, nn.Conv2d, nn.Linear))


def _watch(model: nn.Module, example_inputs, wanted, on_call) -> None:
    """Run `model` on the example once, calling on_call(path, args, output) after every module
    for which wanted(path, module) holds (a hook returning a value would replace the output)."""
    def hook(name):
        def seen(module, args, out) -> None:  # returns nothing, whatever on_call returns
            on_call(name, args, out)
        return seen

    hooks = [mod.register_forward_hook(hook(name))
             for name, mod in model.named_modules() if wanted(name, mod)]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()


def _layer_io(model, example_inputs, filter_fn) -> dict[str, tuple[torch.Tensor, tuple]]:
    """{path: (input, output shape)} of every convertible layer that runs on the example."""
    seen = {}

    def wanted(name, mod) -> bool:
        return (convertible(mod) and (filter_fn is None or filter_fn(mod, name))) or (
            type(mod) is nn.MaxPool2d and not mod.return_indices)

    _watch(model, example_inputs, wanted,
           lambda name, args, out: seen.setdefault(name, (args[0].detach(), tuple(out.shape))))
    return seen


def _dense_ops(model: nn.Module, slot: Slot, x, residual):
    """The original computation the sparse slot stands for."""
    y = model.get_submodule(slot.name)(x)
    if slot.bn:
        y = model.get_submodule(slot.bn)(y)
    return activate(y if residual is None else y + residual, slot.act)


def _decide(model, slot: Slot, x, out_shape, perf: PerfModel, min_speedup) -> Decision:
    sparse = sparse_module(model, slot).to(x.device)
    residual = torch.randn(out_shape, dtype=x.dtype, device=x.device) if slot.residual else None
    args = (x,) if residual is None else (x, residual)
    key = perf.signature(model.get_submodule(slot.name), sparse.sparsity, x, slot.fused())
    m = perf.measure(key, lambda: _dense_ops(model, slot, x, residual), lambda: sparse(*args),
                     x.device.type, min_speedup)
    take = m["speedup"] >= min_speedup and x.dtype == torch.float32
    return Decision(slot.name, sparse.sparsity, m["dense_s"] * 1e3, m["sparse_s"] * 1e3, take,
                    slot.fused(), m.get("spread", 0.0))


def convert(model: nn.Module, example_inputs, min_speedup: float = 1.05,
            perf_model: PerfModel | None = None,
            filter_fn=None) -> tuple[nn.Module, list[Decision]]:
    """A copy of `model` (eval mode) whose pruned Conv1d / Conv2d / Linear layers run sparse
    (Conv2d fused with its BatchNorm / activation / residual add) where measured faster on
    `example_inputs`; and the per-layer decisions. `filter_fn(module, path)` limits the layers
    considered. The copy is checked not slower than `model` and to give its outputs; `model`
    itself is left as it was, whatever happens."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    base = copy.deepcopy(model).eval()
    perf = perf_model or PerfModel()
    seen = _layer_io(base, example_inputs, filter_fn)
    pools = {n: io for n, io in seen.items() if type(base.get_submodule(n)) is nn.MaxPool2d}
    plan = make_plan(base, [n for n in seen if n not in pools])
    decisions = Decisions(_decide(base, slot, *seen[slot.name], perf, min_speedup)
                          for slot in plan.slots)
    decisions.pools = _faster_pools(base, pools, min_speedup)
    work = _keep_not_slower(base, plan, decisions, example_inputs)
    _check_outputs(base, work, example_inputs)
    decisions.blocks = _fuse_blocks(work, example_inputs)
    stages = _stages(work, example_inputs)
    decisions.chunks = _chunk_batches(work, example_inputs, stages, min_speedup)
    decisions.traced = _trace_stages(work, example_inputs, stages)
    return work, decisions


def _time_settings(work: nn.Module, example_inputs, settings, repeat: int = 7):
    """Each of `settings` (a function that puts `work` in one configuration): the model's output
    under it and the fastest of interleaved samples, in seconds (other work on the machine only
    adds time). `work` is left in the last setting."""
    def run(setting):
        setting()
        return work(*example_inputs)

    with torch.no_grad():
        outputs = [run(setting) for setting in settings]  # the first call of each also warms
        timed = paired_medians([lambda s=setting: run(s) for setting in settings],
                               example_inputs[0].device.type, warmup=1, repeat=repeat)
    return outputs, [min(samples) for samples in timed.samples]


def _same(got, want, rtol: float, atol: float) -> bool:
    return isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor) and \
        torch.allclose(got, want, rtol=rtol, atol=atol)


def _fuse_blocks(work: nn.Module, example_inputs) -> dict:
    """Swap every ResidualBlock that can run as one sparse_bottleneck call for SparseBottleneck
    (the same children) and time the model both ways; keep the fused blocks where not slower,
    with the same outputs (as for the whole model, not slower is the bar: the op computes what
    the three convs do). Returns {"blocks", "unfused_ms", "fused_ms"}, or {} when nothing was
    kept."""
    paths = [name for name, m in work.named_modules()
             if type(m) is ResidualBlock and bottleneck_mismatch(m) is None]
    x = example_inputs[0] if len(example_inputs) == 1 else None
    if not paths or not isinstance(x, torch.Tensor) or not has_kernel("sparse_bottleneck",
                                                                      x.device):
        return {}  # (without the kernel the blocks would run unfused: nothing to decide)
    plain = {path: work.get_submodule(path) for path in paths}
    fused = {path: SparseBottleneck.from_block(block) for path, block in plain.items()}

    def swap(to: dict):
        for path in paths:
            replace_module(work, path, to[path])

    (want, got), (unfused_s, fused_s) = _time_settings(
        work, example_inputs, [lambda: swap(plain), lambda: swap(fused)])
    if not _same(got, want, 1e-4, 1e-5) or fused_s > unfused_s:
        swap(plain)
        return {}
    return {"blocks": paths, "unfused_ms": unfused_s * 1e3, "fused_ms": fused_s * 1e3}


def _stages(model: nn.Module, example_inputs) -> list[str]:
    """Paths of the outermost nn.Sequential modules that take and give one tensor of the
    example's batch size along dim 0: what ChunkedSequential can run in chunks."""
    batch = example_inputs[0].shape[0] if example_inputs[0].dim() else 0
    ok = set()

    def check(name, args, out) -> None:
        if (len(args) == 1 and isinstance(args[0], torch.Tensor) and args[0].dim()
                and args[0].shape[0] == batch and isinstance(out, torch.Tensor)
                and out.dim() and out.shape[0] == batch):
            ok.add(name)

    _watch(model, example_inputs,
           lambda name, mod: bool(name) and type(mod) in (nn.Sequential, ChunkedSequential,
                                                          TracedSequential), check)
    return [n for n in sorted(ok) if not any(n.startswith(f"{o}.") for o in ok)]


def _stage_state(work: nn.Module, stages: list[str]) -> dict:
    """Each stage's class and stage attributes, for _restore_stages."""
    return {path: (type(stage), {k: stage.__dict__[k] for k in STAGE_ATTRIBUTES
                                 if k in stage.__dict__})
            for path, stage in ((p, work.get_submodule(p)) for p in stages)}


def _restore_stages(work: nn.Module, saved: dict) -> None:
    """Put the stages back as _stage_state found them."""
    for path, (cls, attributes) in saved.items():
        stage = work.get_submodule(path)
        stage.__class__ = cls
        for key in STAGE_ATTRIBUTES:
            stage.__dict__.pop(key, None)
        stage.__dict__.update(attributes)


def _chunk_batches(work: nn.Module, example_inputs, stages: list[str], min_speedup: float
                   ) -> dict:
    """With a batched example, time the model with its stages (_stages) run 1, 2, 4 or 8 samples
    at a time against the whole batch at once, and keep the fastest chunk where it measured at
    least `min_speedup` faster and gave the same outputs. Returns {"chunk", "stages", "whole_ms",
    "chunked_ms"}, or {} when nothing was chunked."""
    x = example_inputs[0]
    if len(example_inputs) != 1 or not isinstance(x, torch.Tensor) or x.dim() == 0 \
            or x.shape[0] < 2:
        return {}
    sizes = [c for c in (1, 2, 4, 8) if c < x.shape[0]]
    if not stages or not sizes:
        return {}

    def set_chunk(chunk: int) -> None:
        for path in stages:
            ChunkedSequential.adopt_(work.get_submodule(path), chunk)

    saved = _stage_state(work, stages)
    outputs, best = _time_settings(work, example_inputs,
                                   [lambda c=c: set_chunk(c) for c in [0, *sizes]], repeat=5)
    pick = min(range(1, len(best)), key=best.__getitem__)
    if not _same(outputs[pick], outputs[0], 1e-4, 1e-5) or best[0] < min_speedup * best[pick]:
        _restore_stages(work, saved)  # nothing changed
        return {}
    set_chunk(sizes[pick - 1])
    return {"chunk": sizes[pick - 1], "stages": stages, "whole_ms": best[0] * 1e3,
            "chunked_ms": best[pick] * 1e3}


def _trace_stages(work: nn.Module, example_inputs, stages: list[str]) -> dict:
    """Make the stages (_stages) TracedSequential and time the model with their graphs against
    without; keep them where not slower, with the same outputs (a graph changes no result, so,
    as for the whole model, not slower is the bar). Returns {"stages", "eager_ms", "traced_ms"},
    or {} when nothing was kept."""
    if not stages or len(example_inputs) != 1:
        return {}
    saved = _stage_state(work, stages)
    traced = [TracedSequential.adopt_(work.get_submodule(path)) for path in stages]

    def use_graphs(on: bool):
        for stage in traced:
            stage.traced = on

    # the first traced call traces
    (want, got), (eager, fast) = _time_settings(
        work, example_inputs, [lambda: use_graphs(False), lambda: use_graphs(True)])
    if not _same(got, want, 1e-5, 1e-6) or fast > eager:
        _restore_stages(work, saved)
        return {}
    return {"stages": stages, "eager_ms": eager * 1e3, "traced_ms": fast * 1e3}


def _time_pair(base, work, example_inputs):
    """Seconds per call of the original and the converted model: the fastest of interleaved
    samples (other work on the machine only adds time)."""
    device = example_inputs[0].device.type
    with torch.no_grad():
        paired = paired_medians([lambda: base(*example_inputs), lambda: work(*example_inputs)],
                                device, warmup=1, repeat=5, min_seconds=0.02)
    return [min(s) for s in paired.samples]


def _keep_not_slower(base, plan: Plan, decisions: Decisions, example_inputs) -> nn.Module:
    """The converted model; while it times slower than the original, undo the swaps with the
    smallest measured gains (one, then two, four, ... at a time)."""
    taken = sorted((d for d in decisions if d.converted), key=lambda d: d.speedup)
    chunk = 1
    while True:
        work = apply(base, plan, {d.name for d in decisions if d.converted}, set(decisions.pools))
        dense_s, work_s = _time_pair(base, work, example_inputs)
        decisions.dense_ms, decisions.converted_ms = dense_s * 1e3, work_s * 1e3
        if work_s <= dense_s or not taken:
            return work
        for d in taken[:chunk]:
            d.converted = False
        taken, chunk = taken[chunk:], chunk * 2


def _check_outputs(base, work, example_inputs) -> None:
    with torch.no_grad():
        want, got = base(*example_inputs), work(*example_inputs)
    if isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor):
        err = (got.float() - want.float()).abs().max().item() if want.numel() else 0.0
        if not err <= 1e-3 * (1 + want.abs().max().item() if want.numel() else 1):
            raise CompressorError(f"sparse.convert: the converted model differs from the "
                                  f"original by {err:.3g} on the example input; nothing changed")


def whole_model_lines(whole: dict) -> list[str]:
    """What the converter did to the whole model, as it measured it: one sentence a fact, for
    report() and the pipeline's report.md."""
    lines = []
    if whole.get("dense_ms") is not None:
        lines.append(f"Whole model, as the converter timed it on its example: dense "
                     f"{whole['dense_ms']:.3f} ms, converted {whole['converted_ms']:.3f} ms "
                     f"(before fused blocks, batch chunks and traced graphs).")
    if b := whole.get("blocks"):
        lines.append(f"Residual blocks run as one fused sparse op each "
                     f"(compressor.nn.sparse_block): {', '.join(b['blocks'])}: "
                     f"{b['unfused_ms']:.3f} -> {b['fused_ms']:.3f} ms.")
    if c := whole.get("chunks"):
        lines.append(f"Batch run in chunks of {c['chunk']} through {', '.join(c['stages'])}: "
                     f"{c['whole_ms']:.3f} -> {c['chunked_ms']:.3f} ms.")
    if t := whole.get("traced"):
        lines.append(f"Inference of {', '.join(t['stages'])} replayed from traced graphs "
                     f"(compressor.nn.traced): {t['eager_ms']:.3f} -> {t['traced_ms']:.3f} ms.")
    if lines and not any(whole.get(k) for k in ("blocks", "chunks", "traced")):
        lines.append("No fused blocks, batch chunks or traced graphs kept (none applied to this "
                     "model, or none measured not slower).")
    return lines


def report(decisions: Decisions) -> str:
    """Per layer, dense and sparse ms and the decision; then the max-pools swapped and the
    whole-model facts."""
    lines = [f"{d.name}: sparsity {d.sparsity:.2f}, dense {d.dense_ms:.3f} ms, sparse "
             f"{d.sparse_ms:.3f} ms ({d.speedup:.2f}x{', fused ' + d.fused if d.fused else ''}"
             f") -> {'sparse' if d.converted else 'dense'}" for d in decisions]
    for name, (before, after) in (decisions.pools or {}).items():
        lines.append(f"{name}: max-pool {before:.3f} ms -> {after:.3f} ms (FastMaxPool2d)")
    lines += whole_model_lines(decisions.whole_model())
    return "\n".join(lines)
