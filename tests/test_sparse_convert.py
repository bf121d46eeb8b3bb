"""compressor.sparse.convert: decisions, equal outputs, cache, never-slower guard."""

import torch
from torch import nn

from compressor.nn import SparseConv2d, SparseLinear
from compressor.sparse import PerfModel, convert, report


def pruned_model(sparsity: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 12 * 12, 64))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(torch.rand_like(m.weight) >= sparsity)
    return model.eval()


def test_convert_keeps_outputs_and_reports(tmp_path):
    model, x = pruned_model(0.95), torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        want = model(x)
    perf = PerfModel(tmp_path / "perf.json")
    converted, decisions = convert(model, (x,), perf_model=perf)
    assert [d.name for d in decisions] == ["0", "2", "5"]
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want, atol=1e-4, rtol=1e-4)
    kinds = {d.name: d.converted for d in decisions}
    for name, mod in converted.named_children():
        if name in kinds:
            assert isinstance(mod, (SparseConv2d, SparseLinear)) == kinds[name]
    assert "speedup" in report(decisions)
    assert (tmp_path / "perf.json").exists() and len(PerfModel(tmp_path / "perf.json").table) == 3


def test_dense_layers_stay_dense(tmp_path):
    model, x = pruned_model(0.0), torch.randn(1, 8, 12, 12)
    perf = PerfModel(tmp_path / "perf.json")
    for key_layer in ("0", "2", "5"):  # a cached "sparse is slower" verdict must be obeyed
        dense = model.get_submodule(key_layer)
        sparse = (SparseConv2d if isinstance(dense, nn.Conv2d) else SparseLinear).from_dense(dense)
        layer_x = torch.randn(1, 8, 12, 12) if key_layer == "0" else None
        if layer_x is not None:
            perf.table[perf.signature(dense, sparse.sparsity, layer_x)] = {"speedup": 0.5}
    _, decisions = convert(model, (x,), perf_model=perf)
    assert not decisions[0].converted


def test_cache_is_keyed_by_kernel_build(monkeypatch, tmp_path):
    from compressor.sparse import perf_model

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    before = perf_model.cache_path()
    monkeypatch.setattr(perf_model, "KERNEL_VERSION", perf_model.KERNEL_VERSION + 1)
    assert perf_model.cache_path() != before  # timings of an older kernel are not reused
