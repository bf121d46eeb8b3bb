"""Channel importance: L1 filter norm (Li et al.), first-order Taylor (Molchanov et al.),
BatchNorm/LayerNorm scale (network slimming) and random; per class, summed over its slots.

Per slot, scores are L2-normalised (Theta / ||Theta_layer||, Molchanov's per-layer
normalisation) before they are summed over a coupled group's producing layers, so no layer
dominates a residual stream or a global ranking by its scale alone.

Taylor on activations: a gate of ones multiplies the slot's feature maps z (one gate per example
and channel); dL/dgate = sum_m z_m * dL/dz_m, so |dL/dgate| / M is Molchanov's per-example
criterion, averaged over examples and batches. Slots with no activation of their own (hidden
layers inside an nn.LSTM/ON-LSTM) use the weight form |sum_w w * dL/dw| over the channel's
weights.
"""

import numpy as np
import torch

from compressor.data import Dataset
from compressor.structured.plan import Plan
from compressor.structured.rules import NORM, rule_for
from compressor.train import batches, sequence_cross_entropy

CRITERIA = ("l1", "taylor", "bn_scale", "random")


def _normalise(v: np.ndarray, on: bool) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if on and norm > 0 else v


def _l1(plan: Plan, modules) -> dict[int, np.ndarray]:
    g = plan.analysis.cg
    out = {}
    for i, s in enumerate(g.slots):
        if s.source:
            m = modules[s.module]
            with torch.no_grad():
                out[i] = rule_for(m).unit_sums(m, s.name, lambda n, p: p.abs()).numpy()
    return out


def _norm_scales(plan: Plan, modules) -> dict[int, np.ndarray]:
    out = {}
    for i, s in enumerate(plan.analysis.cg.slots):
        if s.kind == "norm":
            scale = NORM.scale(modules[s.module])
            if scale is not None:
                out[i] = scale.numpy()
    return out


def _select(output, index):
    return output if index is None else output[index]


def _gate_hook(store, key, spec):
    index, dim, batch_dim = spec

    def hook(module, args, output):
        z = _select(output, index)
        shape = [1] * z.dim()
        shape[batch_dim], shape[dim] = z.shape[batch_dim], z.shape[dim]
        gate = torch.ones(shape, device=z.device, requires_grad=True)
        store[key] = (gate, z.numel() / (z.shape[batch_dim] * z.shape[dim]), batch_dim, dim)
        gated = z * gate
        if index is None:
            return gated
        return type(output)(gated if k == index else o for k, o in enumerate(output))
    return hook


def _head_hook(store, key):
    def hook(module, args, kwargs):
        query = args[0] if args else kwargs["query"]
        batch = query.shape[0] if module.batch_first else query.shape[1]
        gate = torch.ones(batch, module.num_heads, 1, 1, device=query.device, requires_grad=True)
        module.head_gate = gate
        store[key] = (gate, 1.0, 0, 1)
    return hook


def _hooks(plan: Plan, modules, store) -> tuple[list, list]:
    handles, weight_slots = [], []
    for i, s in enumerate(plan.analysis.cg.slots):
        if not s.source:
            continue
        m = modules[s.module]
        spec = rule_for(m).gate(m, s.name)
        if spec is None:
            weight_slots.append(i)
        elif spec[0] == "head_gate":
            handles.append(m.register_forward_pre_hook(_head_hook(store, i), with_kwargs=True))
        else:
            handles.append(m.register_forward_hook(_gate_hook(store, i, spec)))
    return handles, weight_slots


def _per_example(gate: torch.Tensor, positions: float, batch_dim: int, dim: int) -> np.ndarray:
    """mean over examples of |dL/dgate| / M, per channel."""
    grad = gate.grad.detach().movedim((batch_dim, dim), (0, 1))
    return (grad.reshape(grad.shape[0], grad.shape[1]).abs() / positions).mean(0).numpy()


def taylor(plan: Plan, model, data: Dataset, n_batches: int, batch_size: int, seed: int,
           loss_fn=None) -> dict[int, np.ndarray]:
    """Per source slot, Molchanov's |(1/M) sum_m z dL/dz| averaged over examples and batches."""
    modules = dict(model.named_modules())
    loss_fn = loss_fn or sequence_cross_entropy
    store, sums = {}, {}
    handles, weight_slots = _hooks(plan, modules, store)
    slots = plan.analysis.cg.slots
    was_training = model.training
    model.eval()  # running BN statistics, no dropout: the importance of the network we keep
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        stream = batches(data, batch_size, seed)
        for _ in range(n_batches):
            x, y = next(stream)
            model.zero_grad(set_to_none=True)
            loss_fn(model(x.to(device)), y.to(device)).backward()
            for key, spec in store.items():
                sums[key] = sums.get(key, 0) + _per_example(*spec)
            for i in weight_slots:
                m = modules[slots[i].module]
                with torch.no_grad():
                    v = rule_for(m).unit_sums(m, slots[i].name, lambda n, p: p * _grad(p))
                sums[i] = sums.get(i, 0) + v.abs().numpy()
    finally:
        for h in handles:
            h.remove()
        for m in modules.values():
            if getattr(m, "head_gate", None) is not None:
                m.head_gate = None
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {i: v / n_batches for i, v in sums.items()}


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


def class_scores(plan: Plan, model, criterion: str, normalize: bool, seed: int,
                 per_slot: dict[int, np.ndarray] | None = None) -> tuple[dict, dict]:
    """(root -> score, group name -> criterion actually used) for every prunable class."""
    modules = dict(model.named_modules())
    used = {}
    if criterion == "random":
        rng = np.random.default_rng(seed)
        classes = [r for grp in plan.groups for r in grp.classes]
        return dict(zip(classes, rng.random(len(classes)).tolist(), strict=True)), {
            grp.name: "random" for grp in plan.groups}
    if criterion == "bn_scale":
        norms, fallback = _norm_scales(plan, modules), _l1(plan, modules)
    else:
        norms, fallback = {}, None
        per_slot = per_slot if per_slot is not None else _l1(plan, modules)
    scores = {}
    for grp in plan.groups:
        slots = [i for i in grp.slots if i in norms] if criterion == "bn_scale" else []
        source = slots or grp.sources
        values = norms if slots else (fallback if criterion == "bn_scale" else per_slot)
        used[grp.name] = criterion if slots or criterion != "bn_scale" else "l1 (no norm layer)"
        total = {r: 0.0 for r in grp.classes}
        for i in source:
            v = _normalise(np.asarray(values[i], dtype=np.float64), normalize)
            for root, value in zip(plan.roots[i].tolist(), v.tolist(), strict=True):
                if root in total:
                    total[root] += value
        scores.update(total)
    return scores, used
