"""Masks stay exact through training, save/load and folding; criteria give exact sparsities;
N:M masks are valid; schedules follow their formulas; mistakes give one-line errors."""

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compressor import pruning as P
from compressor.errors import CompressorError


def mixed_model() -> nn.Module:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
            self.conv1 = nn.Conv1d(8, 8, 3, padding=1)
            self.lstm = nn.LSTM(8, 8, batch_first=True)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):  # x: (N, 4, 5, 5)
            h = self.conv2(x).mean(-1)                # (N, 8, 5)
            h = self.conv1(h).transpose(1, 2)         # (N, 5, 8)
            out, _ = self.lstm(h)
            return self.fc(out[:, -1])

    return Net()


def step_many(model, opt, steps=5, keeper=None):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(3, 4, 5, 5)).square().sum().backward()
        if keeper is not None:
            keeper.after_backward()
        opt.step()
        if keeper is not None:
            keeper.after_step()


def assert_pruned_zero(model):
    params = dict(model.named_parameters())
    for name, mask in P.get_masks(model).items():
        assert (params[name][mask == 0] == 0).all(), name


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1),
    lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1),
], ids=["adam", "adamw", "sgd-momentum-wd"])
def test_masks_survive_optimizer_with_stale_state(make_opt):
    model = mixed_model()
    opt = make_opt(model.parameters())
    step_many(model, opt)  # momentum / moments are nonzero everywhere before pruning
    P.prune(model, P.PruneConfig(0.6))
    assert set(P.get_masks(model)) == {"conv2.weight", "conv1.weight", "lstm.weight_ih_l0",
                                       "lstm.weight_hh_l0", "fc.weight"}
    step_many(model, opt, keeper=P.HoldMasks(model, opt))
    assert_pruned_zero(model)
    fc_state = opt.state[model.fc.weight]
    key = "exp_avg" if "exp_avg" in fc_state else "momentum_buffer"
    assert (fc_state[key][model.fc.weight_mask == 0] == 0).all()  # state cleared where pruned
    assert P.sparsity(model)["total"] == pytest.approx(0.6, abs=0.01)


def test_apply_masks_undoes_an_edit_and_fit_holds_masks():
    from compressor.data import Dataset
    from compressor.train import TrainConfig, fit

    model = lenet()
    P.prune_(model, P.PruneConfig(0.5))
    with torch.no_grad():
        model[0].weight.add_(1.0)  # an edit behind the mask's back
    P.apply_masks(model)
    assert_pruned_zero(model)
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    data = Dataset("t", x, y, x, y)
    cfg = TrainConfig(steps=5, batch_size=16, lr=0.05, weight_decay=0.1, eval_every=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.1)
    fit(model, data, cfg, optimizer=opt, callbacks=[P.HoldMasks(model, opt)])
    assert_pruned_zero(model)
    assert P.sparsity(model)["total"] == pytest.approx(0.5, abs=0.01)


def test_state_dict_roundtrip_deepcopy_and_fold():
    model = mixed_model()
    P.prune(model, P.PruneConfig(0.7, scope="global"))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = mixed_model()
    P.load_state_dict(fresh, torch.load(buf, weights_only=True))
    for name, mask in P.get_masks(model).items():
        assert torch.equal(P.get_masks(fresh)[name], mask)
    twin = copy.deepcopy(model)
    assert P.has_masks(twin)
    x = torch.randn(2, 4, 5, 5)
    expected = model(x)
    P.fold_masks(model)
    assert not P.has_masks(model) and P.get_masks(model) == {}
    assert set(model.state_dict()) == set(mixed_model().state_dict())
    assert all(type(p) is nn.Parameter for p in model.parameters())
    torch.testing.assert_close(model(x), expected)
    assert (model.fc.weight == 0).float().mean() > 0.3


def lenet():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(40, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def test_layerwise_iterative_exact_counts_with_output_rate():
    model = lenet()
    rates = P.layer_rates(model, 0.2, output_rate=0.1)
    assert rates == {"0.weight": 0.2, "2.weight": 0.2, "4.weight": 0.1}
    survivors = {"0.weight": 12000, "2.weight": 30000, "4.weight": 1000}
    for _ in range(3):
        P.prune_layerwise(model, rates)
        for name, mask in P.get_masks(model).items():
            survivors[name] -= round(rates[name] * survivors[name])
            assert int(mask.sum()) == survivors[name]
    # nested: a pruned weight never comes back
    before = {k: v.clone() for k, v in P.get_masks(model).items()}
    P.prune_layerwise(model, rates)
    for name, mask in P.get_masks(model).items():
        assert (mask <= before[name]).all()


def test_global_exact_total_and_uneven_layers():
    model = lenet()
    with torch.no_grad():
        model[0].weight.mul_(10)  # the first layer's weights are much larger: spared globally
    P.prune_global(model, 0.5)
    s = P.sparsity(model)
    assert round(s["total"] * 43000) == 21500
    assert s["0.weight"] < 0.1 < 0.5 < s["2.weight"]
    kept = torch.cat([m.flatten() for m in P.get_masks(model).values()])
    weights = torch.cat([model[i].weight.flatten() for i in (0, 2, 4)]).abs()
    assert weights[kept == 0].max() <= weights[kept == 1].min()


@settings(max_examples=15, deadline=None)
@given(out=st.integers(1, 9), inp=st.integers(1, 9), rate=st.floats(0.01, 0.99))
def test_layerwise_count_fuzz(out, inp, rate):
    layer = nn.Linear(inp, out)
    P.prune_layerwise(layer, {"weight": rate})
    assert int(layer.weight_mask.sum()) == out * inp - round(rate * out * inp)
    assert_pruned_zero(layer)


def test_random_criterion_and_random_masks_like():
    model = lenet()
    gen = torch.Generator().manual_seed(0)
    P.prune(model, P.PruneConfig(0.3, criterion="random"))
    masks = P.get_masks(model)
    other = P.random_masks_like(masks, gen)
    for name in masks:
        assert int(other[name].sum()) == int(masks[name].sum())
        assert not torch.equal(other[name], masks[name])


@pytest.mark.parametrize("shape", [(8, 16), (6, 8, 3), (4, 12, 3, 3), (16, 4)])
def test_nm_masks_valid(shape):
    weight = torch.randn(shape)
    mask = P.nm_mask(weight, 2, 4)
    groups = mask.movedim(1, -1).reshape(-1, 4)
    assert (groups.sum(-1) == 2).all()
    assert P.is_nm_sparse(weight * mask, 2, 4) and not P.is_nm_sparse(weight, 2, 4)
    # the kept ones are the largest of their group
    kept = (weight.abs() * mask).movedim(1, -1).reshape(-1, 4)
    dropped = (weight.abs() * (1 - mask)).movedim(1, -1).reshape(-1, 4)
    assert (kept.max(-1).values >= dropped.max(-1).values).all()


def test_nm_prune_model_and_errors():
    model = nn.Sequential(nn.Linear(8, 16), nn.LSTM(16, 4))
    P.prune(model, P.PruneConfig(nm="2:4"))
    assert all(P.is_nm_sparse(m, 2, 4) for m in P.get_masks(model).values())
    with pytest.raises(CompressorError, match=r"cannot prune weight: reduction dim 6 .* not a "
                       "multiple of M=4; no weight of the model"):
        P.prune_nm(nn.Linear(6, 3))


def test_nm_skips_and_names_layers_it_cannot_take():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Conv1d(8, 6, 3), nn.Conv1d(6, 8, 1),
                          nn.Flatten(), nn.Linear(48, 4))
    report = {}
    masks = P.prune_nm(model, 2, 4, report=report)
    assert sorted(masks) == ["1.weight", "4.weight"]
    assert "not a multiple of M=4" in report["2.weight"]["reason"]
    assert "lookup" in report["0.weight"]["reason"]
    assert report["1.weight"]["action"] == "pruned 2:4"
    fresh = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 6), nn.Linear(6, 2))
    with pytest.raises(CompressorError, match=r"cannot prune 2\.weight.*drop strict"):
        P.prune_nm(fresh, 2, 4, strict=True)
    assert not P.has_masks(fresh)  # strict refuses before touching the model


def test_prune_records_why_each_weight_was_left_dense():
    from compressor.history import history

    model = nn.Sequential(nn.Embedding(10, 8), nn.Conv1d(8, 6, 3), nn.Conv1d(6, 8, 1),
                          nn.Flatten(), nn.Linear(48, 4))
    P.prune_(model, P.PruneConfig(nm="2:4", exclude=("4.*",)))
    layers = history(model)[-1]["layers"]
    assert layers["1.weight"]["action"] == "pruned 2:4"
    assert "not a multiple of M=4" in layers["2.weight"]["reason"]  # the N:M skip, not "excluded"
    assert "lookup" in layers["0.weight"]["reason"]
    assert layers["4.weight"] == {"action": "kept dense",
                                  "reason": "excluded (exclude or filter_fn)"}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)
    with pytest.warns(UserWarning):
        P.prune_(model, P.PruneConfig(sparsity=0.9, scope="global"))
    assert "floor" in history(model)[-1]["layers"]["1.weight"]["reason"]


def test_global_pruning_keeps_a_floor_per_layer_and_warns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)  # one threshold would empty the output layer
    report = {}
    with pytest.warns(UserWarning, match="would leave 1.weight almost or entirely empty"):
        masks = P.prune_global(model, 0.9, report=report)
    assert int(masks["1.weight"].sum()) == 10  # 1% of 1000
    assert sum(int(m.sum()) for m in masks.values()) == 11000 - round(0.9 * 11000)
    assert "floor" in report["1.weight"]["reason"]
    top = model[1].weight.detach().abs().flatten().topk(10).indices
    assert masks["1.weight"].flatten()[top].all()  # the floor keeps the layer's largest
    off = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10))
    with torch.no_grad():
        off[1].weight.mul_(1e-3)
    assert int(P.prune_global(off, 0.9, min_keep=0.0)["1.weight"].sum()) == 0
    with pytest.raises(CompressorError, match="0 < N < M"):
        P.nm_mask(torch.randn(4, 4), 4, 4)


def test_schedules():
    agp = P.Gradual(0.9, begin_step=100, end_step=1100, frequency=100)
    assert agp.sparsity_at(0) == 0 and agp.sparsity_at(1100) == pytest.approx(0.9)
    assert agp.sparsity_at(600) == pytest.approx(0.9 * (1 - 0.5**3))
    assert agp.is_pruning_step(300) and not agp.is_pruning_step(350)
    model = lenet()
    pruner = P.GradualPruner(model, agp, {"0.weight": 0.9, "2.weight": 0.9, "4.weight": 0.45})
    for step in range(0, 1101, 100):
        pruner.after_step(step)
        if step == 600:
            assert P.sparsity(model)["2.weight"] == pytest.approx(agp.sparsity_at(600), abs=1e-4)
    s = P.sparsity(model)
    assert s["0.weight"] == pytest.approx(0.9) and s["4.weight"] == pytest.approx(0.45)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_rate_outside_unit_interval(rate):
    with pytest.raises(CompressorError, match=r"must be a fraction in \(0, 1\)"):
        P.PruneConfig(rate)
    with pytest.raises(CompressorError, match=r"must be a fraction in \(0, 1\)"):
        P.layer_rates(lenet(), 0.2, output_rate=rate)


def test_nothing_to_prune():
    model = nn.Sequential(nn.BatchNorm1d(4), nn.ReLU())
    with pytest.raises(CompressorError, match="has nothing to prune"):
        P.prune(model, P.PruneConfig(0.5))
    with pytest.raises(CompressorError, match="left after exclude"):
        P.layer_rates(lenet(), 0.2, exclude=["*"])
    with pytest.raises(CompressorError, match="matches no prunable weight"):
        P.layer_rates(lenet(), 0.2, rates={"classifier.*": 0.5})
