"""Structured pruning on every shipped architecture: the pruned model computes exactly what the
dense model computes with the same channels removed by hand (see structured_cases), its tensors
shrink, it exports to ONNX and matches in onnxruntime, saves and loads, and trains."""

import copy

import pytest
import torch

from compressor.data import Dataset
from compressor.export import to_onnx
from compressor.export.api import ExportConfig
from compressor.models import MODELS
from compressor.pipeline.modelfile import ModelFile, load_model, save_model
from compressor.structured import StructuredConfig, macs, prune_channels_, structured_result
from compressor.train import TrainConfig, fit
from tests.structured_cases import SMALL, case, masked_dense

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def _pruned(name: str, criterion: str = "random", ratio: float = 0.5):
    model, x, filter_fn = case(name)
    dense = copy.deepcopy(model)
    prune_channels_(model, StructuredConfig(ratio=ratio, criterion=criterion, seed=1), x,
                    filter_fn=filter_fn)
    return dense, model, x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pruned_equals_dense_with_channels_removed_by_hand(name):
    dense, pruned, x = _pruned(name)
    result = structured_result(pruned)
    assert result["params_after"] < 0.8 * result["params_before"]
    assert all(g["after"] < g["before"] for g in result["groups"].values())
    shrunk = [k for k, v in result["layers"].items() if v["action"] == "shrunk"]
    assert shrunk and sum(p.numel() for p in pruned.parameters()) == result["params_after"]
    with torch.no_grad():
        got, want, full = pruned(x), masked_dense(dense, result)(x), dense(x)
    scale = full.abs().max().item()
    print(f"{name}: max |pruned - by hand| {(got - want).abs().max():.2e}, "
          f"|pruned - dense| {(got - full).abs().max():.2e}, output scale {scale:.2e}")
    torch.testing.assert_close(got, want, atol=1e-5 * max(scale, 1e-3), rtol=1e-5)
    assert (got - full).abs().max() > 1e-3 * scale  # removal changed something: not a no-op


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pruned_model_exports_to_onnx(name, tmp_path):
    _, pruned, x = _pruned(name, criterion="l1")
    exporter = "dynamo" if name == "resnet_small" else "torchscript"  # dynamo: 3-7 s a model
    report = to_onnx(pruned, x, tmp_path / f"{name}.onnx",
                     ExportConfig(exporter=exporter, measure_latency=False, random_inputs=0,
                                  encodings=()))
    assert report.max_error <= report.tolerance


@pytest.mark.parametrize("name", ["resnet_small", "vit", "gpt", "onlstm_lm", "mobilenet_v2"])
def test_pruned_model_saves_loads_and_trains(name, tmp_path):
    _, pruned, x = _pruned(name, criterion="l1")
    path = save_model(tmp_path / "m.pt", pruned, ModelFile(name, dict(SMALL.get(name, {}))))
    loaded, _ = load_model(path)
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x))
    assert macs(loaded, x) == macs(pruned, x)
    y = torch.randint(0, 7 if name not in ("vit", "resnet_small") else 10, x.shape[:1])
    if name in ("gpt", "onlstm_lm"):
        y = torch.randint(0, 50, x.shape)
    data = _tiny_data(x, y)
    result = fit(loaded, data, TrainConfig(steps=3, batch_size=2, eval_every=0))
    assert all(torch.isfinite(torch.tensor(result.losses)))


def _tiny_data(x, y):
    return Dataset("tiny", x, y, x, y)


def test_macs_shrink_with_the_channels():
    model, x, _ = case("resnet_small")
    dense = macs(model, x)
    prune_channels_(model, StructuredConfig(ratio=0.5), x)
    assert 0.2 * dense < macs(model, x) < 0.35 * dense  # both sides of most convs halve
