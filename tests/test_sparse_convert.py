"""compressor.sparse.convert: decisions, fusion, equal outputs, cache, robust timing, the
never-slower guard, export of a converted model; graph patterns and fold_batchnorm."""

import copy
import random
import time
import warnings

import pytest
import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.graph import find_patterns
from compressor.models import build_model
from compressor.nn import SparseConv2d, SparseLinear
from compressor.nn.fused import ResidualBlock
from compressor.quantization import fold_batchnorm
from compressor.sparse import PerfModel, convert, converter, report
from tests.conftest import require_kernel


def prune_(model: nn.Module, sparsity: float, skip_first: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for m in layers[1 if skip_first else 0:]:
            m.weight.mul_(torch.rand_like(m.weight) >= sparsity)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def pruned_model(sparsity: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 12 * 12, 64))
    return prune_(model, sparsity, skip_first=False)


def small_resnet() -> nn.Module:
    return prune_(build_model("resnet_small", feature_shape=(3, 16, 16), width=16,
                              blocks=(1, 1)), 0.9)


def test_convert_keeps_outputs_and_reports(tmp_path):
    model, x = pruned_model(0.95), torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        want = model(x)
    perf = PerfModel(tmp_path / "perf.json")
    converted, decisions = convert(model, (x,), perf_model=perf)
    assert [d.name for d in decisions] == ["0", "2", "5"]
    assert [d.fused for d in decisions] == ["relu", "relu", ""]
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want, atol=1e-4, rtol=1e-4)
    kinds = {d.name: d.converted for d in decisions}
    for name, mod in converted.named_children():
        if name in kinds:
            assert isinstance(mod, (SparseConv2d, SparseLinear)) == kinds[name]
    assert all(d.dense_ms > 0 and d.sparse_ms > 0 for d in decisions)
    text = report(decisions)
    assert "dense" in text and "Whole model, as the converter timed it" in text
    assert len(PerfModel(tmp_path / "perf.json").table) == 3
    assert all(isinstance(m, nn.Conv2d) for m in (model[0], model[2]))  # original untouched


def test_cached_verdict_is_obeyed(tmp_path):
    model, x = pruned_model(0.0), torch.randn(1, 8, 12, 12)
    perf = PerfModel(tmp_path / "perf.json")
    sparse = SparseConv2d.from_dense(model[0])
    perf.table[perf.signature(model[0], sparse.sparsity, x, "relu")] = {
        "dense_s": 1e-3, "sparse_s": 2e-3, "speedup": 0.5, "spread": 0.01}
    _, decisions = convert(model, (x,), perf_model=perf)
    assert not decisions[0].converted and decisions[0].dense_ms == 1.0


def test_unsure_timings_are_measured_again(tmp_path):
    perf = PerfModel(tmp_path / "perf.json")
    nap = lambda s: (lambda: time.sleep(s))  # noqa: E731
    rng = random.Random(0)
    jitter = lambda: time.sleep(rng.uniform(0.0005, 0.0015))  # noqa: E731  (a busy machine)
    clear = perf.measure("clear", nap(0.004), nap(0.001), threshold=1.05)
    close = perf.measure("close", jitter, jitter, threshold=1.05)
    assert clear["samples"] == 7 and clear["speedup"] > 2
    assert close["samples"] > 7  # re-measured, samples pooled
    assert PerfModel(tmp_path / "perf.json").table["close"]["samples"] == close["samples"]


def test_whole_model_guard_undoes_smallest_gains(monkeypatch, tmp_path):
    require_kernel("sparse_conv2d", "cpu")
    model, x = pruned_model(0.95), torch.randn(1, 8, 12, 12)
    perf = PerfModel(tmp_path / "perf.json")
    with torch.no_grad():
        x2 = model[1](model[0](x))
    for layer, inp, speedup in ((model[0], x, 3.0), (model[2], x2, 2.0)):
        sparse = SparseConv2d.from_dense(layer)
        perf.table[perf.signature(layer, sparse.sparsity, inp, "relu")] = {
            "dense_s": speedup * 1e-3, "sparse_s": 1e-3, "speedup": speedup, "spread": 0.0}
    timings = iter([(1.0, 2.0), (1.0, 0.9)])  # slower with both swaps, faster with one
    monkeypatch.setattr(converter, "_time_pair", lambda *a: next(timings))
    convs = lambda m, name: isinstance(m, nn.Conv2d)  # noqa: E731  (only the cached layers)
    converted, decisions = convert(model, (x,), perf_model=perf, min_speedup=1.5,
                                   filter_fn=convs)
    assert [d.converted for d in decisions] == [True, False]  # the 2x one was undone
    assert isinstance(converted[0], SparseConv2d) and isinstance(converted[2], nn.Conv2d)
    assert decisions.converted_ms == 900.0


def test_resnet_blocks_fuse_and_export_without_warm_up(tmp_path):
    require_kernel("sparse_conv2d", "cpu")
    model, x = small_resnet(), torch.randn(2, 3, 16, 16)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        want = model(x)
    converted, decisions = convert(model, (x,), min_speedup=0.0,
                                   perf_model=PerfModel(tmp_path / "perf.json"))
    assert {d.fused for d in decisions if d.name.endswith("conv2")} == {"bn+add+relu"}
    assert any(isinstance(m, ResidualBlock) for m in converted.modules())
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want, atol=1e-4, rtol=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    fresh = copy.deepcopy(converted)  # a fresh copy: nothing computed from data beforehand
    exported = torch.export.export(fresh, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), want, atol=1e-4, rtol=1e-4)


def test_failed_conversion_leaves_model(tmp_path):
    model = small_resnet()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError):
        convert(model, (torch.randn(1, 5, 16, 16),), perf_model=PerfModel(tmp_path / "p.json"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert isinstance(model.layer1[0].conv1, nn.Conv2d)


def test_cache_is_keyed_by_kernel_build(monkeypatch, tmp_path):
    from compressor.sparse import perf_model

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    before = perf_model.cache_path()
    monkeypatch.setattr(perf_model, "KERNEL_VERSION", perf_model.KERNEL_VERSION + 1)
    assert perf_model.cache_path() != before  # timings of an older kernel are not reused


@pytest.mark.parametrize("name,residuals", [("resnet18", 8), ("resnet50", 16),
                                            ("mobilenet_v2", 10)])
def test_patterns_of_torchvision_layouts(name, residuals):
    patterns = find_patterns(build_model(name, feature_shape=(3, 32, 32)))
    assert len(patterns.residuals) == residuals
    convs = [u for u in patterns.units if u.bn is not None]
    assert convs and all(u.conv.rpartition(".")[0] == u.bn.rpartition(".")[0] for u in convs)


def test_fold_batchnorm_follows_the_graph():
    model = small_resnet()
    x = torch.randn(2, 3, 16, 16)
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.layer1[0].bn2, nn.Identity)
    assert isinstance(model.bn1, nn.BatchNorm2d)  # a copy unless inplace
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.body(x)
        return self.bn(self.conv(x)) if x.sum() > 0 else x  # data-dependent: fx cannot trace


def test_untraceable_model_falls_back_with_a_warning(tmp_path):
    model = Untraceable().eval()
    with pytest.warns(UserWarning, match="folding only BatchNorms that directly follow"):
        folded = fold_batchnorm(model)
    assert isinstance(folded.body[1], nn.Identity) and isinstance(folded.bn, nn.BatchNorm2d)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert(model, (torch.randn(1, 3, 8, 8),), perf_model=PerfModel(tmp_path / "p.json"))
    assert any("one by one" in str(w.message) for w in caught)


def test_convert_rejects_nothing_silently(tmp_path):
    with pytest.raises(CompressorError):
        from compressor.sparse.converter import _check_outputs

        _check_outputs(nn.Identity(), lambda x: x + 1, (torch.zeros(3),))


class FunctionalBlock(nn.Module):
    """torchvision's style: attributes conv1/bn1, `out += identity`, F.relu in forward."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)

    def forward(self, x):
        out = torch.nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return torch.relu(out)


def test_functional_residual_block_is_found_and_fused(tmp_path):
    require_kernel("sparse_conv2d", "cpu")
    model = prune_(nn.Sequential(FunctionalBlock(), FunctionalBlock()), 0.8, skip_first=False)
    patterns = find_patterns(model)
    assert [(r.block, r.act, r.shortcut) for r in patterns.residuals] == [("0", "relu", None),
                                                                         ("1", "relu", None)]
    x = torch.randn(1, 6, 9, 7)
    converted, decisions = convert(model, (x,), min_speedup=0.0,
                                   perf_model=PerfModel(tmp_path / "perf.json"))
    assert [d.fused for d in decisions[:2]] == ["bn+relu", "bn+add+relu"]
    assert isinstance(converted[0], ResidualBlock)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("spec", [(8, 16, 3, 1, 1, 1, 1), (6, 9, 5, 2, 2, 1, 3),
                                  (4, 4, 3, 1, "same", 2, 4), (5, 7, 1, 1, 0, 1, 1),
                                  (4, 6, 3, 1, "valid", 1, 1)], ids=str)
def test_sparse_conv1d_equals_the_conv1d(spec):
    from compressor.nn import SparseConv1d

    cin, cout, k, s, p, d, g = spec
    torch.manual_seed(0)
    conv = nn.Conv1d(cin, cout, k, s, p, d, g)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) > 0.7)
    sparse = SparseConv1d.from_dense(conv)
    for x in (torch.randn(2, cin, 17), torch.randn(1, 17, cin).transpose(1, 2),
              torch.randn(1, cin, d * (k - 1) + 1)):
        with torch.no_grad():
            torch.testing.assert_close(sparse(x), conv(x), atol=1e-5, rtol=1e-5)
    back = sparse.to_dense()
    assert type(back) is nn.Conv1d and torch.equal(back.weight, conv.weight)
    assert type(sparse.export_module()) is nn.Conv1d
    with pytest.raises(CompressorError, match=r"SparseConv1d expects input \(N, "):
        sparse(torch.randn(2, cin, 3, 3))
    with pytest.raises(CompressorError, match="SparseConv1d.from_dense needs an nn.Conv1d"):
        SparseConv1d.from_dense(nn.Conv2d(cin, cout, k))


class _OwnForward(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


def test_conv1d_and_linear_subclasses_are_considered(tmp_path, monkeypatch):
    """1-D CNNs convert, a subclass of nn.Linear that keeps Linear's forward (torch's
    NonDynamicallyQuantizableLinear) too; one with its own forward is left alone."""
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    from compressor.nn import SparseConv1d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 32, 5, padding=2), nn.ReLU(),
                          nn.Conv1d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          NonDynamicallyQuantizableLinear(32 * 64, 64), _OwnForward(64, 10))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                m.weight.mul_(torch.rand_like(m.weight) >= 0.9)
    x = torch.randn(1, 4, 64)
    with torch.no_grad():
        want = model.eval()(x)
    # every swap taken whatever this machine times: the test is about what is considered
    monkeypatch.setattr(converter, "_time_pair", lambda base, work, inputs: [1.0, 0.5])
    converted, decisions = convert(model, (x,), min_speedup=0.0,
                                   perf_model=PerfModel(tmp_path / "perf.json"))
    assert [d.name for d in decisions] == ["0", "2", "5"]  # "6" has its own forward
    assert [type(converted[k]) for k in (0, 2, 5)] == [SparseConv1d, SparseConv1d, SparseLinear]
    assert type(converted[6]) is _OwnForward
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want, atol=1e-4, rtol=1e-4)


def test_sparsify_takes_packed_conv1d_layers(monkeypatch, tmp_path):
    """A pruned, INQ-packed 1-D CNN: its Pow2Conv1d layers are candidates for the sparse kernel
    like any Conv1d (here every swap is taken, whatever this machine times)."""
    from compressor.nn import Pow2Conv1d
    from compressor.quantization import convert_to_pow2
    from compressor.sparse import SparsifyConfig, sparsify_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 32, 5, padding=2), nn.ReLU(), nn.Conv1d(32, 16, 3))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv1d):
                m.weight.mul_(torch.rand_like(m.weight) >= 0.9)
    convert_to_pow2(model.eval(), 5)
    assert isinstance(model[2], Pow2Conv1d)
    x = torch.randn(1, 4, 40)
    with torch.no_grad():
        want = model(x)
    monkeypatch.setattr(converter, "_time_pair", lambda base, work, inputs: [1.0, 0.5])
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))  # the timings cache stays here
    sparsify_(model, SparsifyConfig(min_speedup=1e-6), example_inputs=x)
    assert [type(m).__name__ for m in model] == ["SparseConv1d", "ReLU", "SparseConv1d"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=1e-4, rtol=1e-4)
