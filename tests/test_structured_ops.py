"""Structured pruning: coupling through each kind of op, the criteria, the schedules, composition
with unstructured pruning, and the one-line errors."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.data import Dataset, load_dataset
from compressor.errors import CompressorError
from compressor.models import build_model
from compressor.pruning import PruneConfig, apply_masks, get_masks, prune
from compressor.structured import StructuredConfig, prune_channels_, structured_result
from compressor.structured.criteria import taylor
from compressor.structured.plan import build_plan
from compressor.structured.trace import analyse
from tests.structured_cases import masked_dense

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


class Mixed(nn.Module):
    """concat (with a part that cannot shrink), chunk into a GLU, a grouped conv with
    GroupNorm, a depthwise conv, and a raw parameter added and a functional Linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.glu = nn.Conv2d(17, 16, 1)  # 8 + 6 + the 3 input channels
        self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, 12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.shift = nn.Parameter(torch.randn(1, 12, 1, 1))
        self.head_weight = nn.Parameter(torch.randn(5, 12 * 4))

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x)), x], dim=1)
        value, gate = self.glu(y).chunk(2, dim=1)
        y = value * torch.sigmoid(gate)
        y = F.relu(self.gn(self.grouped(y)))
        y = F.relu(self.dw(y) + self.shift)
        y = F.adaptive_avg_pool2d(y, 2).flatten(1)
        return F.linear(y, self.head_weight)


def _check_by_hand(model, x, cfg, filter_fn=None):
    dense = copy.deepcopy(model).eval()
    prune_channels_(model, cfg, x, filter_fn=filter_fn)
    result = structured_result(model)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), masked_dense(dense, result)(x))
    return result


def test_concat_chunk_grouped_groupnorm_depthwise_and_raw_parameters():
    torch.manual_seed(0)
    model, x = Mixed(), torch.randn(2, 3, 8, 8)
    result = _check_by_hand(model, x, StructuredConfig(ratio=0.5, criterion="random"))
    assert model.a.out_channels == 4 and model.b.out_channels == 3
    assert model.glu.in_channels == 4 + 3 + 3  # the input's own 3 channels stay
    assert model.glu.out_channels == 8  # value and gate halves shrink alike
    assert model.grouped.groups == 2 and model.gn.num_groups == 2  # whole groups go
    assert model.dw.groups == model.dw.in_channels == 6 and model.shift.shape == (1, 6, 1, 1)
    assert model.head_weight.shape == (5, 24)  # 6 channels x 2 x 2 pooled positions
    assert not [k for k, v in result["layers"].items() if v["action"] == "kept"]


def test_layernorm_stream_matches_slicing_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.LayerNorm(10), nn.GELU(), nn.Linear(10, 3))
    dense = copy.deepcopy(model)
    x = torch.randn(4, 6)
    prune_channels_(model, StructuredConfig(ratio=0.3, criterion="random"), x)
    keep = torch.tensor(structured_result(model)["layers"]["0:out"]["kept"])
    assert len(keep) == 7
    l0, ln, l3 = dense[0], dense[1], dense[3]
    y = F.linear(x, l0.weight[keep], l0.bias[keep])
    y = F.layer_norm(y, (7,), ln.weight[keep], ln.bias[keep], ln.eps)
    want = F.linear(F.gelu(y), l3.weight[:, keep], l3.bias)
    torch.testing.assert_close(model(x), want)


class LiteralHeads(nn.Module):
    """Attention whose head count is a literal in the code, held by no attribute."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, x):
        q, k, v = self.qkv(x).split(16, dim=-1)
        q, k, v = (t.view(x.shape[0], x.shape[1], 4, 4).transpose(1, 2) for t in (q, k, v))
        y = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        return self.mlp(self.proj(y.transpose(1, 2).reshape(x.shape)))


def test_a_literal_size_keeps_its_channels_and_the_rest_prunes():
    torch.manual_seed(0)
    model, x = LiteralHeads(), torch.randn(2, 5, 16)
    result = _check_by_hand(model, x, StructuredConfig(ratio=0.5, criterion="l1"))
    assert model.qkv.out_features == 48 and model.mlp[0].out_features == 16
    assert "mlp.0" in result["groups"] and "qkv" not in result["groups"]


def test_global_scope_round_to_and_per_layer_ratios():
    x = torch.randn(2, 3, 8, 8)
    model = build_model("resnet_small", width=16, feature_shape=(3, 8, 8))
    cfg = StructuredConfig(ratio=0.5, round_to=8, ratios={"layer1.*": 0.0})
    prune_channels_(model, cfg, x)
    assert model.layer1[0].conv1.out_channels == 16  # its own ratio: untouched
    assert model.layer3[0].conv1.out_channels == 32
    assert all(m.out_channels % 8 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    torch.manual_seed(0)
    model = build_model("resnet_small", width=16, feature_shape=(3, 8, 8))
    dense = sum(p.numel() for p in model.parameters())
    prune_channels_(model, StructuredConfig(ratio=0.5, scope="global"), x)
    groups = structured_result(model)["groups"]
    removed = sum(g["before"] - g["after"] for g in groups.values())
    assert removed == sum(g["before"] for g in groups.values()) // 2
    assert len({g["after"] / g["before"] for g in groups.values()}) > 1  # not uniform
    assert sum(p.numel() for p in model.parameters()) < dense


def test_bn_scale_removes_the_smallest_scales():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -3.0, 0.1, 2.0, -0.2, 1.0]))
    prune_channels_(model, StructuredConfig(ratio=0.5, criterion="bn_scale"),
                    torch.randn(2, 3, 6, 6))
    assert structured_result(model)["layers"]["0:out"]["kept"] == [1, 3, 5]


def test_taylor_is_molchanovs_criterion():
    """|mean over positions of z * dL/dz| per example and channel, averaged over examples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    data = Dataset("t", x, y, x, y)
    plan = build_plan(analyse(model, (x[:2],)))
    got = taylor(plan, model, data, n_batches=1, batch_size=6, seed=0)
    slot = next(i for i, s in enumerate(plan.analysis.cg.slots) if s.key == "0:out")
    z = model[0](x[torch.randperm(6, generator=torch.Generator().manual_seed(0))])
    z.retain_grad()
    F.cross_entropy(model[1:](z), y[torch.randperm(6, generator=torch.Generator().manual_seed(0))]
                    ).backward()
    want = (z * z.grad).mean((2, 3)).abs().mean(0)
    torch.testing.assert_close(torch.from_numpy(got[slot]).float(), want)


def test_iterative_taylor_with_fine_tuning(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    data = load_dataset("shapes", num_samples=200, size=8)
    torch.manual_seed(0)
    model = build_model("resnet_small", width=8, feature_shape=(3, 8, 8))
    cfg = StructuredConfig(ratio=0.5, criterion="taylor", iterations=2, finetune_steps=3,
                           taylor_batches=2, batch_size=16)
    prune_channels_(model, cfg, data.x_test[:2], data=data)
    result = structured_result(model)
    assert result["rounds"] == 2 and model.layer3[0].conv1.out_channels == 16
    assert all(g["criterion"] == "taylor" for g in result["groups"].values())
    with pytest.raises(CompressorError, match="needs data="):
        prune_channels_(model, StructuredConfig(criterion="taylor"), data.x_test[:2])


def test_composes_with_unstructured_pruning_both_ways():
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(0)
    model = build_model("resnet_small", width=8, feature_shape=(3, 8, 8))
    prune(model, PruneConfig(sparsity=0.5))
    before = {k: int((m == 0).sum()) for k, m in get_masks(model).items()}
    prune_channels_(model, StructuredConfig(ratio=0.5), x)
    for key, mask in get_masks(model).items():  # masks were cut with their weights
        weight = model.get_parameter(key)
        assert mask.shape == weight.shape and ((weight != 0) <= (mask != 0)).all()
    assert sum(int((m == 0).sum()) for m in get_masks(model).values()) < sum(before.values())
    apply_masks(model)
    assert model(x).shape == (2, 10)
    prune(model, PruneConfig(sparsity=0.5))  # and unstructured after structured
    assert model(x).shape == (2, 10)


def test_error_ratio_that_empties_a_group():
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 3))
    with pytest.raises(CompressorError, match=r"would remove every channel of group '0'"):
        prune_channels_(model, StructuredConfig(ratio=0.75), torch.randn(1, 4))
    assert model[0].out_features == 2  # left as it was


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4))
        self.block = Branchy()

    def forward(self, x):
        return self.block(self.inner(x))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x


def test_error_untraceable_names_the_submodule():
    model = Untraceable()
    with pytest.raises(CompressorError, match=r"cannot trace submodule 'block' \(Branchy\)"):
        prune_channels_(model, StructuredConfig(), torch.randn(2, 4))
    prune_channels_(model, StructuredConfig(leaf_modules=("block",)), torch.randn(2, 4))
    assert model.inner[0].out_features == 4  # feeds the black box: kept
    assert "block" in structured_result(model)["layers"]


def test_layer_with_no_rule_is_named_and_left_alone_or_an_error_when_strict():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 8, 3),
                          nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(CompressorError, match=r"strict\): 2: no structured-pruning rule for "
                                              r"ConvTranspose2d"):
        prune_channels_(copy.deepcopy(model), StructuredConfig(strict=True), x)
    prune_channels_(model, StructuredConfig(), x)
    layers = structured_result(model)["layers"]
    assert layers["2"] == {"action": "kept",
                           "reason": "no structured-pruning rule for ConvTranspose2d"}
    assert model[0].out_channels == 8 and model[2].out_channels == 8  # around it: kept
    assert model[4].out_channels == 4  # elsewhere: pruned


def test_config_errors_are_one_line():
    with pytest.raises(CompressorError, match=r"StructuredConfig.ratio must be in \[0, 1\)"):
        StructuredConfig(ratio=1.0)
    with pytest.raises(CompressorError, match=r"StructuredConfig.criterion must be one of"):
        StructuredConfig(criterion="l2")
    with pytest.raises(CompressorError, match=r"ratios needs scope='layerwise'"):
        StructuredConfig(scope="global", ratios={"a": 0.1})
    with pytest.raises(CompressorError, match="example_inputs must be a tensor"):
        prune_channels_(nn.Linear(2, 2), StructuredConfig(), [1, 2])
