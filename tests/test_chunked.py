"""ChunkedSequential and the converter's batch chunking: exact results, the model's structure and
state_dict kept, export as a plain Sequential, and no chunking where samples interact."""

import copy
import io

import pytest
import torch
from torch import nn

from compressor.export.prepare import exported_copy
from compressor.models import build_model
from compressor.nn.chunked import ChunkedSequential
from compressor.sparse import PerfModel, convert, converter, report
from tests.test_sparse_convert import prune_


class MixesSamples(nn.Module):
    """Subtracts the batch mean: a result that depends on which samples run together."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


def resnet() -> nn.Module:
    return prune_(build_model("resnet_small", feature_shape=(3, 16, 16), width=16,
                              blocks=(1, 1)), 0.9)


@pytest.mark.parametrize("chunk, batch", [(1, 5), (2, 5), (4, 3), (3, 3), (8, 1)])
def test_chunked_sequential_equals_the_sequential(chunk, batch):
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(batch, 3, 7, 6)
    with torch.no_grad():
        want = seq(x)
        keys = list(seq.state_dict())
        chunked = ChunkedSequential.adopt_(seq, chunk)
        assert chunked is seq and isinstance(seq, nn.Sequential) and seq.chunk == chunk
        torch.testing.assert_close(seq(x), want)
    assert list(seq.state_dict()) == keys
    plain = seq.export_module()
    assert type(plain) is nn.Sequential and list(plain.state_dict()) == keys
    buffer = io.BytesIO()
    torch.save(seq, buffer)  # an importable class: whole-module files still load
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(again(x), want)


def test_adopt_rejects_bad_arguments():
    with pytest.raises(TypeError, match="nn.Sequential"):
        ChunkedSequential.adopt_(nn.ModuleList([nn.ReLU()]), 2)
    with pytest.raises(ValueError, match="chunk"):
        ChunkedSequential.adopt_(nn.Sequential(nn.ReLU()), -1)


def test_converter_chunks_stages_and_keeps_structure(monkeypatch, tmp_path):
    """With min_speedup 0 the fastest chunk size is kept whatever it measured: the stages become
    ChunkedSequential, outputs and state_dict keys stay those of the model."""
    model, x = resnet(), torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
    stages = converter._stages(model, (x,))
    chunks = converter._chunk_batches(copy.deepcopy(model).eval(), (x,), stages, 0.0)
    assert chunks["chunk"] in (1, 2, 4) and chunks["stages"]
    converted, decisions = convert(model, (x,), min_speedup=1.05,
                                   perf_model=PerfModel(tmp_path / "perf.json"))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want, atol=1e-4, rtol=1e-4)
    work = copy.deepcopy(converted)
    found = converter._chunk_batches(work, (x,), converter._stages(work, (x,)), 0.0)
    for path in found["stages"]:
        assert isinstance(work.get_submodule(path), ChunkedSequential)
    assert list(work.state_dict()) == list(converted.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(work(x), want, atol=1e-4, rtol=1e-4)
    decisions.chunks = found
    assert f"Batch run in chunks of {found['chunk']}" in report(decisions)
    plain, notes, _ = exported_copy(work)
    assert not any(isinstance(m, ChunkedSequential) for m in plain.modules())
    kind = type(work.get_submodule(found["stages"][0])).__name__  # Chunked-, or Traced-
    assert any(f"{kind} -> Sequential" in line for line in notes["converted"])
    with torch.no_grad():
        torch.testing.assert_close(plain(x), want, atol=1e-4, rtol=1e-4)


def test_no_chunks_where_samples_interact():
    model = nn.Sequential(nn.Identity(), nn.Sequential(nn.Linear(4, 4), MixesSamples()))
    x = torch.randn(8, 4)
    assert converter._chunk_batches(model, (x,), converter._stages(model, (x,)), 0.0) == {}
    assert type(model[1]) is nn.Sequential and not hasattr(model[1], "chunk")
    one = (x[:1],)  # batch 1: nothing to split
    assert converter._chunk_batches(model, one, converter._stages(model, one), 0.0) == {}
