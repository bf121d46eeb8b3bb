"""The INQ quantizer rule on hand-computed cases, and the partition/freeze/retrain procedure."""

import pytest
import torch
from torch import nn

from compressor.data import load_dataset
from compressor.errors import CompressorError
from compressor.formats.pow2_levels import quantize_to_levels
from compressor.quantization import pow2_exponents, pow2_levels, pow2_quantize
from compressor.quantization.inq import INQ, INQConfig, inq_, quantizable_parameters

# ---- the quantizer -------------------------------------------------------------------------------


def q(values, bits):
    return pow2_quantize(torch.tensor(values, dtype=torch.float32), bits).tolist()


def test_n1_and_levels_by_hand():
    # s = 0.9: 4s/3 = 1.2 -> n1 = 0; 5 bits: n2 = 0 + 1 - 8 = -7
    assert pow2_exponents(torch.tensor([0.9, -0.1]), 5) == (0, -7)
    assert pow2_exponents(torch.tensor([0.9]), 4) == (0, -3)
    assert pow2_exponents(torch.tensor([0.9]), 3) == (0, -1)
    assert pow2_exponents(torch.tensor([0.9]), 2) == (0, 0)
    assert pow2_exponents(torch.tensor([0.75]), 5)[0] == 0   # 4s/3 = 1 exactly
    assert pow2_exponents(torch.tensor([0.7499]), 5)[0] == -1
    assert pow2_exponents(torch.tensor([-3.0]), 5)[0] == 2   # 4 -> 2
    assert pow2_levels(0, 4).tolist() == [0.0, 0.125, 0.25, 0.5, 1.0]


def test_halfway_values_round_away_from_zero():
    # s = 1.0 (n1 = 0), 3 bits: levels 0, 1/2, 1; the thresholds 1/4 and 3/4 themselves go up
    # (the paper's intervals [(a+b)/2, 3b/2) are closed below)
    assert q([1.0, 0.75, -0.75, 0.25, -0.25], 3) == [1.0, 1.0, -1.0, 0.5, -0.5]
    assert q([1.0, 0.7499, 0.2499, -0.2499], 3) == [1.0, 0.5, 0.0, -0.0]
    # 5 bits: the smallest level is 2^-7; half of it goes up, just below goes to zero
    assert q([1.0, 2.0**-8, 2.0**-8 * 0.999, 0.375, 0.37], 5) == [1.0, 2.0**-7, 0.0, 0.5, 0.25]


def test_largest_weight_and_tiny_weights():
    # s = 1.45 < 1.5 * 2^0: the largest weight rounds to 2^n1 = 1, never clipped past it
    assert q([1.45, -1.45, 0.001], 5) == [1.0, -1.0, 0.0]
    assert q([0.75, 0.1], 2) == [1.0, 0.0]  # ternary: {0, +-1}; 0.1 < 1/2 -> 0
    assert q([0.75, 0.5, -0.5], 2) == [1.0, 1.0, -1.0]


def test_all_zero_layer():
    w = torch.zeros(3, 4)
    assert pow2_exponents(w, 5) == (0, -7)
    assert torch.equal(pow2_quantize(w, 5), w)


def test_output_is_on_the_levels_and_idempotent():
    w = torch.randn(50, 30)
    for bits in (2, 3, 4, 5):
        out = pow2_quantize(w, bits)
        n1, _ = pow2_exponents(w, bits)
        levels = pow2_levels(n1, bits).tolist()
        allowed = set(levels) | {-v for v in levels}
        assert set(out.abs().unique().tolist()) <= allowed
        assert torch.equal(pow2_quantize(out, bits), out)
        assert torch.equal(out.abs().max(), torch.tensor(2.0**n1))


@pytest.mark.parametrize("bits", [1, 6, 0, 4.0, True])
def test_bits_outside_range(bits):
    with pytest.raises(CompressorError, match="bits must be an integer in 2..5"):
        pow2_quantize(torch.randn(3), bits)


def test_non_float_and_nonfinite_weights():
    with pytest.raises(CompressorError, match="weight must be a floating-point tensor"):
        pow2_quantize(torch.arange(4), 4)
    with pytest.raises(CompressorError, match="NaN or inf"):
        pow2_quantize(torch.tensor([1.0, float("nan")]), 4)


# ---- the procedure -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    data.x_train, data.y_train = data.x_train[:300], data.y_train[:300]
    return data


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))


def quick(**kw):
    base = dict(bits=4, portions=(0.5, 0.75, 1.0), steps_per_stage=4, weight_decay=0.1, lr=0.05)
    return INQConfig(**{**base, **kw})


def test_frozen_weights_bit_identical_across_stages(digits):
    model = small_model()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = INQ(model, digits, quick(), progress=False)
    snapshots = []
    for stage in (1, 2, 3):
        run.run(stop_after=stage)
        snapshots.append(({n: m.clone() for n, m in run.state.frozen.items()},
                          {n: p.detach().clone() for n, p in run.params.items()}))
    for (frozen, values), (_, later) in zip(snapshots, snapshots[1:], strict=False):
        for name in frozen:
            assert torch.equal(values[name][frozen[name]], later[name][frozen[name]]), name
    # stage 1 froze the largest half of each layer (by magnitude), on the INQ levels of the start
    frozen1, values1 = snapshots[0]
    for name in frozen1:
        mag = original[name].abs()
        assert frozen1[name].sum() == round(0.5 * mag.numel())
        assert mag[frozen1[name]].min() >= mag[~frozen1[name]].max()
        n1 = pow2_exponents(original[name], 4)[0]
        assert torch.equal(values1[name][frozen1[name]],
                           quantize_to_levels(original[name], n1, 4)[frozen1[name]])
    # unfrozen weights did train, and at the end every weight is on the levels
    assert not torch.equal(values1["0.weight"][~frozen1["0.weight"]],
                           original["0.weight"][~frozen1["0.weight"]])
    for name, p in run.params.items():
        n1 = run.state.n1[name]
        assert torch.equal(p.detach(), quantize_to_levels(p.detach(), n1, 4))


def test_final_steps_retrain_only_the_float_parameters(digits):
    plain, extra = small_model(), small_model()
    inq_(plain, digits, quick(), progress=False)
    history = inq_(extra, digits, quick(final_steps=6), progress=False)
    last = history[-1]
    assert last["portion"] == 1.0 and "test_acc_before_final" in last
    for name, p in plain.named_parameters():
        q = dict(extra.named_parameters())[name]
        if name.endswith("weight"):  # quantized and frozen: identical to the paper's procedure
            assert torch.equal(p, q), name
        else:  # biases moved in the extra retraining
            assert not torch.equal(p, q), name
    with pytest.raises(CompressorError, match="final_steps"):
        quick(final_steps=-1)


def test_resume_after_a_stage_equals_uninterrupted(digits, tmp_path):
    full = small_model()
    history = inq_(full, digits, quick(), checkpoint=tmp_path / "a.pt", progress=False)
    assert [h["stage"] for h in history] == [1, 2, 3]
    part = small_model()
    INQ(part, digits, quick(), checkpoint=tmp_path / "b.pt", progress=False).run(stop_after=1)
    resumed = small_model()  # fresh dense weights: the checkpoint must restore everything
    INQ(resumed, digits, quick(), checkpoint=tmp_path / "b.pt", progress=False).run()
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    again = INQ(small_model(), digits, quick(), checkpoint=tmp_path / "a.pt", progress=False)
    assert again.run() == history  # a finished run is a no-op
    with pytest.raises(CompressorError, match="different config"):
        INQ(small_model(), digits, quick(bits=5), checkpoint=tmp_path / "a.pt", progress=False)


def test_pruned_zeros_stay_zero(digits):
    model = small_model()
    with torch.no_grad():
        pruned = torch.rand_like(model[0].weight) < 0.6
        model[0].weight[pruned] = 0.0
    inq_(model, digits, quick(portions=(0.5, 1.0)), progress=False)
    assert (model[0].weight[pruned] == 0).all()
    off = small_model()
    with torch.no_grad():
        off[0].weight[pruned] = 0.0
    inq_(off, digits, quick(portions=(0.5, 1.0), keep_pruned_zeros=False), progress=False)
    assert (off[0].weight[pruned] != 0).any()  # retraining revives them when the flag is off


class ONLSTM(nn.Module):  # stands in for compressor.nn.ONLSTM: matched by class name
    def __init__(self):
        super().__init__()
        self.weight_ih_l0 = nn.Parameter(torch.randn(8, 4))
        self.weight_hh_l0 = nn.Parameter(torch.randn(8, 2))
        self.bias_ih_l0 = nn.Parameter(torch.zeros(8))


def test_parameter_selection():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), ONLSTM(), nn.BatchNorm1d(3), nn.Linear(3, 2))
    names = set(quantizable_parameters(model, INQConfig()))
    assert names == {"0.weight", "1.weight_ih_l0", "1.weight_hh_l0", "3.weight"}
    only = quantizable_parameters(model, INQConfig(param_names=("3.weight",)))
    assert set(only) == {"3.weight"}
    with pytest.raises(CompressorError, match="no parameter"):
        quantizable_parameters(model, INQConfig(param_names=("9.weight",)))


def test_presets_and_config_validation():
    assert INQConfig().portions == (0.5, 0.75, 0.875, 1.0)
    four = INQConfig.preset("paper-4bit")
    assert (four.bits, four.portions) == (4, (0.3, 0.6, 0.8, 1.0))
    three = INQConfig.preset("paper-3bit", steps_per_stage=7)
    assert (three.bits, three.steps_per_stage) == (3, 7)
    assert INQConfig.preset("paper-ternary").bits == 2
    with pytest.raises(CompressorError, match="unknown INQ preset"):
        INQConfig.preset("paper-1bit")
    with pytest.raises(CompressorError, match="end at 1.0"):
        INQConfig(portions=(0.5, 0.9))
    with pytest.raises(CompressorError, match="increase strictly"):
        INQConfig(portions=(0.5, 0.5, 1.0))
    with pytest.raises(CompressorError, match="bits must be"):
        INQConfig(bits=8)


def test_convert_after_inq_keeps_the_function(digits):
    from compressor.nn import Pow2Linear
    from compressor.quantization import convert_to_pow2

    model = small_model()
    run = INQ(model, digits, quick(bits=5, portions=(0.6, 1.0)), progress=False)
    run.run()
    x = digits.x_test[:17]
    want = model(x)
    packed = convert_to_pow2(model, 5, run.state.n1)
    assert isinstance(packed[0], Pow2Linear) and isinstance(packed[2], Pow2Linear)
    assert packed[0].n1 == run.state.n1["0.weight"]
    torch.testing.assert_close(packed(x), want, atol=1e-4, rtol=1e-5)
