"""TracedSequential and the converter's traced stages: the graph gives the Sequential's results,
is used only for inference, follows edits to the stage, pickles and exports as the Sequential;
the converter keeps or undoes it by its measurement."""

import copy
import io

import pytest
import torch
from torch import nn

from compressor.export.prepare import exported_copy
from compressor.models import build_model
from compressor.nn import traced
from compressor.nn.chunked import ChunkedSequential
from compressor.nn.pow2 import Pow2Linear
from compressor.nn.sparse import SparseConv2d
from compressor.nn.traced import TracedSequential
from compressor.sparse import PerfModel, convert, converter, report
from compressor.timing import Paired
from tests.test_sparse_convert import prune_


def stage() -> nn.Sequential:
    """A stage as the converter leaves one: sparse fused convs, a dense conv, Identities."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) > 0.7)
    return nn.Sequential(SparseConv2d.from_dense(conv, activation="relu"), nn.Identity(),
                         nn.Conv2d(8, 5, 1), nn.ReLU()).eval()


def graphs(seq: TracedSequential) -> dict:
    return seq.__dict__.get("_graphs", {})


@pytest.mark.parametrize("chunk, batch", [(0, 1), (0, 4), (2, 5), (1, 1)])
def test_traced_stage_equals_the_sequential(chunk, batch):
    seq = stage()
    x = torch.randn(batch, 3, 9, 7)[..., ::1].transpose(2, 3).contiguous().transpose(2, 3)
    keys = list(seq.state_dict())
    with torch.no_grad():
        plain = seq(x)
        TracedSequential.adopt_(seq, chunk)
        assert isinstance(seq, ChunkedSequential) and seq.chunk == chunk
        seq.traced = False
        want = seq(x)  # chunks may round dense convs differently: the graph must not
        torch.testing.assert_close(want, plain, rtol=1e-5, atol=1e-6)
        seq.traced = True
        for _ in range(2):  # traced on the first call, the graph replayed on the second
            torch.testing.assert_close(seq(x), want, rtol=0, atol=0)
        assert [g.graph is not None for g in graphs(seq).values()] == [True]
        # another input shape gets a graph of its own
        torch.testing.assert_close(seq(x[:1, :, :5]), stage()(x[:1, :, :5]), rtol=0, atol=0)
    assert len(graphs(seq)) == 2 and list(seq.state_dict()) == keys


def test_graph_only_for_inference():
    """Autograd, training mode and inputs that need a gradient run the Sequential itself."""
    seq = TracedSequential.adopt_(stage())
    x = torch.randn(2, 3, 6, 6)
    want = stage()(x)
    torch.testing.assert_close(seq(x), want)  # autograd on
    assert graphs(seq) == {}
    with torch.no_grad():
        torch.testing.assert_close(seq(x.requires_grad_()), want)
        assert graphs(seq) == {}
        seq.train()
        seq(x.detach())
        assert graphs(seq) == {}
        seq.eval()
        seq.traced = False
        seq(x.detach())
        assert graphs(seq) == {}


def test_graph_follows_edits_to_the_stage():
    seq = TracedSequential.adopt_(stage())
    x = torch.randn(2, 3, 6, 6)

    def graph():  # the graph the last call used
        (only,) = graphs(seq).values()
        assert only.graph is not None
        return only

    with torch.no_grad():
        seq(x)
        first = graph()
        seq[2].weight.mul_(2.0)  # in place: the graph holds the same tensor
        torch.testing.assert_close(seq(x), nn.Sequential(*seq)(x), rtol=0, atol=0)
        assert graph() is first
        seq[3] = nn.Sigmoid()  # a swapped child, in training mode as built: the modules run
        torch.testing.assert_close(seq(x), nn.Sequential(*seq)(x), rtol=0, atol=0)
        assert seq(x).min() > 0 and graph() is first
        seq[3].eval()  # now a new graph
        torch.testing.assert_close(seq(x), nn.Sequential(*seq)(x), rtol=0, atol=0)
        assert seq(x).min() > 0 and graph() is not first
        seq[3].__class__ = nn.Tanh  # a class swapped in place
        torch.testing.assert_close(seq(x), nn.Sequential(*seq)(x), rtol=0, atol=0)
        assert seq(x).min() < 0
        seq[2].bias = nn.Parameter(torch.full((5,), 3.0))  # a replaced parameter
        torch.testing.assert_close(seq(x), nn.Sequential(*seq)(x), rtol=0, atol=0)
        other = stage()
        dense = other[0].to_dense()
        with torch.no_grad():
            dense.conv.weight.mul_(torch.rand_like(dense.conv.weight) > 0.5)
        other[0] = SparseConv2d.from_dense(dense.conv, activation="relu")
        assert other[0].values.numel() != seq[0].values.numel()
        seq.load_state_dict(other.state_dict())  # another nnz: new buffers
        torch.testing.assert_close(seq(x), nn.Sequential(*seq)(x), rtol=0, atol=0)
        seq.double()
        torch.testing.assert_close(seq(x.double()), nn.Sequential(*seq)(x.double()), rtol=0,
                                   atol=0)
        seq.float()
        seq.append(nn.Tanh().eval())  # a child added
        assert seq(x).abs().max() <= 1
        torch.testing.assert_close(seq(x), nn.Sequential(*seq)(x), rtol=0, atol=0)
        for drop in (lambda: seq.train().eval(), seq.float,
                     lambda: seq.load_state_dict(seq.state_dict())):
            seq(x)
            drop()
            assert graphs(seq) == {}
        ChunkedSequential.adopt_(seq, 1)  # another chunk: its own graph
        seq(x)
        assert {key[-1] for key in graphs(seq)} == {1}


def test_packed_layer_edited_in_place():
    """A power-of-two layer decodes its codes in Python: a graph traced before the codes were
    edited in place must not keep the old decoded weight."""
    torch.manual_seed(0)
    packed = Pow2Linear.from_float(nn.Linear(6, 4), bits=4)
    packed.mode = "decoded"
    seq = TracedSequential.adopt_(nn.Sequential(packed, nn.ReLU()).eval())
    x = torch.randn(3, 6)
    with torch.no_grad():
        before = seq(x)
        packed.codes.copy_(packed.codes.flip(0))
        after = seq(x)
        torch.testing.assert_close(after, nn.Sequential(*seq)(x), rtol=0, atol=0)
    assert not torch.equal(before, after)


def test_hooks_inside_are_called():
    """A forward hook on a module inside (or a global one) makes the stage run its modules."""
    seq = TracedSequential.adopt_(stage())
    x = torch.randn(2, 3, 6, 6)
    seen = []
    with torch.no_grad():
        seq(x)  # a graph first
        handle = seq[2].register_forward_hook(lambda m, a, out: seen.append(out.shape))
        torch.testing.assert_close(seq(x), nn.Sequential(*seq)(x), rtol=0, atol=0)
        assert seen == [torch.Size([2, 5, 6, 6])] * 2  # from the stage's call and the check's
        handle.remove()
        seq(x)
        assert len(seen) == 2
        handle = torch.nn.modules.module.register_module_forward_pre_hook(
            lambda m, a: seen.append(type(m).__name__))
        try:
            seq(x[:1])  # a new signature: not traced while the hook is there
        finally:
            handle.remove()
        assert "Conv2d" in seen and (1, 3, 6, 6) not in {k[0] for k in graphs(seq)}


class RefusesTracing(nn.Module):
    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("not traceable")
        return x + 1


class BranchesOnValues(nn.Module):
    """Python that a trace would bake in: the branch taken on the traced input."""

    def forward(self, x):
        return x + 1 if x.mean() > 0 else x - 1


def test_untraceable_stage_runs_eagerly(monkeypatch):
    monkeypatch.setattr(traced, "GRAPH_SAFE", traced.GRAPH_SAFE | {RefusesTracing})
    seq = TracedSequential.adopt_(nn.Sequential(nn.ReLU(), RefusesTracing()).eval())
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), x.relu() + 1)
        torch.testing.assert_close(seq(x), x.relu() + 1)
    assert [g.graph for g in graphs(seq).values()] == [None]


def test_modules_of_unknown_classes_are_not_traced():
    seq = TracedSequential.adopt_(nn.Sequential(nn.Linear(3, 3), BranchesOnValues()).eval())
    with torch.no_grad():
        for sign in (1.0, -1.0, 1.0):
            x = torch.full((2, 3), sign)
            torch.testing.assert_close(seq(x), nn.Sequential(*seq)(x), rtol=0, atol=0)
    assert [g.graph for g in graphs(seq).values()] == [None]


def test_first_call_runs_an_inplace_stage_once():
    seq = TracedSequential.adopt_(nn.Sequential(nn.LeakyReLU(0.1, inplace=True)).eval())
    with torch.no_grad():
        for _ in range(2):  # traced, then replayed
            x = torch.full((2, 3), -1.0)
            torch.testing.assert_close(seq(x), torch.full((2, 3), -0.1))
            torch.testing.assert_close(x, torch.full((2, 3), -0.1))  # changed once, as eager


def test_modes_autocast_and_signatures():
    """A module inside in training mode (BatchNorm recalibrating) or autocast runs the modules;
    back in eval, the graph again; new shapes past MAX_SIGNATURES run eagerly."""
    seq = TracedSequential.adopt_(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval())
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        seq(x)
        seq[1].train()
        before = seq[1].running_mean.clone()
        torch.testing.assert_close(seq(x), nn.Sequential(*seq)(x))
        assert not torch.equal(seq[1].running_mean, before)  # the modules ran: stats moved
        seq[1].eval()
        torch.testing.assert_close(seq(x), nn.Sequential(*seq)(x), rtol=0, atol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert seq(x).dtype == nn.Sequential(*seq)(x).dtype == torch.bfloat16
        assert seq(x).dtype == torch.float32
        for n in range(1, traced.MAX_SIGNATURES + 3):
            y = torch.randn(1, 3, n, 4)
            torch.testing.assert_close(seq(y), nn.Sequential(*seq)(y), rtol=0, atol=0)
    assert len(graphs(seq)) == traced.MAX_SIGNATURES


def test_pickles_copies_and_exports_as_a_sequential():
    seq = TracedSequential.adopt_(stage())
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        want = seq(x)
    assert graphs(seq)
    buffer = io.BytesIO()
    torch.save(seq, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    for other in (again, copy.deepcopy(seq)):
        assert type(other) is TracedSequential and graphs(other) == {}
        with torch.no_grad():
            torch.testing.assert_close(other(x), want, rtol=0, atol=0)
    assert type(seq.export_module()) is nn.Sequential


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_other_tracers_see_the_modules():
    """fx, torch.export and torch.jit trace through the Sequential, never into a graph."""
    inner = TracedSequential.adopt_(nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval())
    model = nn.Sequential(nn.Tanh(), inner).eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        want = model(x)
        assert graphs(inner)  # used, and so present while the others trace
        fx = torch.fx.symbolic_trace(model)
        exported = torch.export.export(model, (x,)).module()
        jit = torch.jit.trace(model, (x,), check_trace=False)
        for other in (fx, exported, jit):
            torch.testing.assert_close(other(x), want, rtol=0, atol=0)
    assert any(n.op == "call_module" and n.target == "1.0" for n in fx.graph.nodes)
    assert "aten.linear" in str(exported.graph) or "aten.addmm" in str(exported.graph)


def test_adopt_rejects_other_modules():
    with pytest.raises(TypeError, match="nn.Sequential"):
        TracedSequential.adopt_(nn.ModuleList([nn.ReLU()]))
    with pytest.raises(ValueError, match="chunk"):
        TracedSequential.adopt_(nn.Sequential(nn.ReLU()), -1)


def fake_timing(eager_s: float, traced_s: float):
    def timed(fns, *args, **kwargs):
        for fn in fns:
            fn()
        return Paired([eager_s, traced_s], [0.0, 0.0], [[eager_s], [traced_s]])
    return timed


@pytest.mark.parametrize("traced_faster", [True, False])
def test_converter_keeps_traced_stages_only_where_faster(monkeypatch, tmp_path, traced_faster):
    """The decision follows the measurement (timings faked here: speed belongs to benchmarks):
    kept, the stages are TracedSequential, in the report, and export as plain Sequentials;
    undone, they are back as they were, chunk included."""
    model = prune_(build_model("resnet_small", feature_shape=(3, 16, 16), width=16,
                               blocks=(1, 1)), 0.9)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
    converted, decisions = convert(model, (x,), perf_model=PerfModel(tmp_path / "perf.json"))
    work = copy.deepcopy(converted)
    stages = converter._stages(work, (x,))
    assert stages
    for path in stages:  # as _chunk_batches leaves a kept chunk, and without any graph
        here = work.get_submodule(path)
        ChunkedSequential.adopt_(here, 1)
        here.__class__ = ChunkedSequential
        vars(here).pop("traced", None), vars(here).pop("_graphs", None)
    monkeypatch.setattr(converter, "paired_medians", fake_timing(1.0, 0.5 if traced_faster
                                                                 else 2.0))
    found = converter._trace_stages(work, (x,), stages)
    kinds = {type(work.get_submodule(p)) for p in stages}
    with torch.no_grad():
        torch.testing.assert_close(work(x), want, atol=1e-4, rtol=1e-4)
    if not traced_faster:
        assert found == {} and kinds == {ChunkedSequential}
        assert all(work.get_submodule(p).chunk == 1 for p in stages)
        assert not any("traced" in vars(work.get_submodule(p)) for p in stages)
        return
    assert found["stages"] == stages and kinds == {TracedSequential}
    assert all(work.get_submodule(p).chunk == 1 for p in stages)
    decisions.traced = found
    assert f"Inference of {', '.join(stages)} replayed from traced graphs" in report(decisions)
    plain, notes, _ = exported_copy(work)
    assert not any(isinstance(m, ChunkedSequential) for m in plain.modules())
    assert any("TracedSequential -> Sequential" in line for line in notes["converted"])
