"""Shared cases for the structured-pruning tests: a small config of every shipped architecture,
and the dense reference with the same channels removed by hand.

Removing channel c is, in the dense model, making c's activation exactly zero where it is
produced: its filter row and bias (and its norm scale and shift) are zeroed, so every consumer
multiplies zeros. For an LSTM hidden unit, zeroing its candidate-gate rows keeps its cell at 0
from a zero state, so its output is 0; for a head, zeroing its value rows makes its output 0.
That holds wherever the nonlinearities map 0 to 0 (ReLU, ReLU6, GELU, tanh) and no norm
averages over the removed channels (LayerNorm: tested on its own by slicing by hand).
"""

import copy
import inspect

import torch
from torch import nn

from compressor.models import MODELS, build_model
from compressor.nn import ONLSTM

TOKENS = {"bert", "gpt", "lstm_lm", "onlstm_lm"}
SMALL = {
    "resnet18": dict(width=8, feature_shape=(3, 32, 32), num_classes=7),
    "resnet50": dict(width=8, feature_shape=(3, 32, 32), num_classes=7),
    "vgg16": dict(width=8, hidden=32, pool=1, feature_shape=(3, 32, 32), num_classes=7),
    "vgg16_bn": dict(width=8, hidden=32, pool=1, feature_shape=(3, 32, 32), num_classes=7),
    "mobilenet_v2": dict(width_mult=0.25, feature_shape=(3, 16, 16), num_classes=7),
    "resnet_small": dict(width=8, feature_shape=(3, 16, 16)),
    "vit": dict(dim=32, depth=2, heads=4, mlp_dim=48, feature_shape=(3, 16, 16)),
    "bert": dict(dim=32, depth=2, heads=4, mlp_dim=48, feature_shape=(12,), vocab_size=50),
    "gpt": dict(dim=32, depth=2, heads=4, mlp_dim=48, feature_shape=(12,), num_classes=50),
    "lstm_lm": dict(feature_shape=(12,), num_classes=50, dropout=0.0),
    "onlstm_lm": dict(feature_shape=(12,), num_classes=50, dropout=0.0, dropconnect=0.0),
    "conv4": dict(feature_shape=(2, 40)),
    "lenet": dict(feature_shape=(64,)),
}
# the residual stream of a transformer passes LayerNorms: keep it (by excluding a producer of
# it), so heads and MLP units are what the masked-dense reference checks there
STREAM = {"vit": "conv_proj", "bert": "tok_embed", "gpt": "tok_embed"}


def case(name: str, batch: int = 2, seed: int = 0):
    """(model in eval mode with random BN statistics, example input, filter_fn)."""
    kwargs = SMALL.get(name, {})
    torch.manual_seed(seed)
    model = build_model(name, **kwargs).eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    shape = tuple(kwargs.get("feature_shape",
                             inspect.signature(MODELS[name]).parameters["feature_shape"].default))
    x = torch.randint(0, 50, (batch, *shape)) if name in TOKENS else torch.rand(batch, *shape)
    stream = STREAM.get(name)
    filter_fn = (lambda m, fqn: fqn != stream) if stream else None
    return model, x, filter_fn


def _removed(kept: list[int], n: int) -> torch.Tensor:
    keep = set(kept)
    return torch.tensor([i for i in range(n) if i not in keep], dtype=torch.long)


@torch.no_grad()
def _zero(module: nn.Module, slot: str, kept: list[int]) -> None:
    if slot.startswith("param:"):
        _, attr, dim = slot.split(":")
        p = getattr(module, attr)
        p.index_fill_(int(dim), _removed(kept, p.shape[int(dim)]), 0.0)
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and slot == "out":
        gone = _removed(kept, module.weight.shape[0])
        module.weight[gone] = 0
        if module.bias is not None:
            module.bias[gone] = 0
    elif isinstance(module, nn.Embedding):
        module.weight[:, _removed(kept, module.weight.shape[1])] = 0
    elif slot == "channels":
        gone = _removed(kept, module.weight.shape[0])
        module.weight[gone] = 0
        module.bias[gone] = 0
    elif isinstance(module, nn.LSTM) and slot.startswith("hidden_l"):
        k, h = slot[len("hidden_l"):], module.hidden_size
        gone = _removed(kept, h) + 2 * h  # the candidate (g) gate rows
        for name in (f"weight_ih_l{k}", f"weight_hh_l{k}", f"bias_ih_l{k}", f"bias_hh_l{k}"):
            getattr(module, name)[gone] = 0
    elif isinstance(module, ONLSTM) and slot.startswith("hidden_l"):
        _zero_onlstm_chunks(module, int(slot[len("hidden_l"):]), kept)
    elif slot == "heads":  # nn.MultiheadAttention or its prunable twin: the value rows
        heads = module.num_heads
        d = module.in_proj_weight.shape[0] // 3 // heads
        rows = torch.cat([2 * heads * d + h * d + torch.arange(d) for h in _removed(kept, heads)])
        module.in_proj_weight[rows] = 0
        module.in_proj_bias[rows] = 0
    elif slot == "out":  # attention output rows
        gone = _removed(kept, module.out_proj.weight.shape[0])
        module.out_proj.weight[gone] = 0
        module.out_proj.bias[gone] = 0


def _zero_onlstm_chunks(module: ONLSTM, k: int, kept: list[int]) -> None:
    """A removed chunk: master logits at -1e4 (softmax gives it exactly 0, so cumax over the
    other chunks is the smaller model's) and candidate rows zeroed (its cells stay 0)."""
    d, c = module.hidden_size, module.chunk_size
    n = d // c
    units = _removed(kept, d)
    chunks = torch.unique(units // c)
    w_ih, w_hh, b_ih, b_hh = module.layer_weights(k)
    master = torch.cat([chunks, n + chunks])
    candidate = 2 * n + d + units
    for rows in (master, candidate):
        w_ih[rows] = 0
        w_hh[rows] = 0
        b_hh[rows] = 0
        b_ih[rows] = 0
    b_ih[master] = -1e4


def masked_dense(dense: nn.Module, result: dict) -> nn.Module:
    """A copy of the dense model with the channels the pruning removed zeroed by hand."""
    masked = copy.deepcopy(dense)
    for key, layer in result["layers"].items():
        if layer["action"] != "shrunk":
            continue
        module_name, _, slot = key.partition(":")
        if slot in ("in",) or slot.startswith("in_l"):
            continue
        _zero(masked.get_submodule(module_name), slot, layer["kept"])
    return masked
