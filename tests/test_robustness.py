"""Layer robustness: re-initialisation / re-randomisation errors per layer, the heatmap, and the
budgets structured and unstructured pruning take."""

import pytest
import torch

from compressor.data import load_dataset
from compressor.errors import CompressorError
from compressor.models import build_model
from compressor.pruning import PruneConfig, prune
from compressor.robustness import (
    RobustnessConfig,
    RobustnessResult,
    budgets,
    default_layers,
    heatmap,
    layer_robustness,
    robustness_scores,
    train_with_checkpoints,
)
from compressor.structured import StructuredConfig, prune_channels_
from compressor.train import TrainConfig, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def _trained(name, data, steps, **kwargs):
    torch.manual_seed(0)
    model = build_model(name, feature_shape=data.feature_shape, num_classes=data.num_classes,
                        **kwargs)
    cfg = TrainConfig(steps=steps, batch_size=32, lr=2e-3, eval_every=0)
    return model, train_with_checkpoints(model, data, cfg, (0, 1, 10))


def test_mlp_robustness_result_heatmap_and_budgets(tmp_path):
    data = load_dataset("digits")
    model, checkpoints = _trained("mlp", data, 150)
    assert sorted(checkpoints) == [0, 1, 10, 150]
    steps = (0, 1, 10, 150)
    result = layer_robustness(model, checkpoints, data, RobustnessConfig(checkpoints=steps,
                                                                         trials=2))
    assert result.layers == ["1", "3", "5", "7"] == default_layers(model)
    assert len(result.reinit) == 4 and all(len(row) == 4 for row in result.reinit)
    base = 1 - evaluate(model, data.x_test, data.y_test)
    assert result.base_error == pytest.approx(base)  # the model was restored
    for row in result.reinit:  # resetting a layer to the final weights changes nothing
        assert row[-1] == pytest.approx(base)
    assert max(result.rerandom) > base + 0.2  # a fresh random layer breaks a trained net
    png = heatmap(result, tmp_path / "mlp.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    scores = robustness_scores(result)
    critical = max(scores, key=scores.get)
    ratios, bits = budgets(result, "channels"), budgets(result, "bits")
    assert scores[critical] == 1.0 and ratios[critical] == 0.0 and bits[critical] == 5
    assert all(0.0 <= r <= 0.7 for r in ratios.values()) and set(bits.values()) <= {3, 4, 5}
    sparsity = budgets(result, "sparsity", low=0.3, high=0.8)
    prune(model, PruneConfig(sparsity=0.5, rates=sparsity))  # the patterns fit its layers
    hidden = {k: v for k, v in ratios.items() if k != "7"}  # the output layer keeps its classes
    prune_channels_(model, StructuredConfig(ratios=hidden), data.x_test[:2])
    assert model[1].out_features == 256 - round(ratios["1"] * 256)


def test_resnet_small_robustness(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    data = load_dataset("shapes", num_samples=400, size=8)
    model, checkpoints = _trained("resnet_small", data, 40, width=8)
    result = layer_robustness(model, checkpoints, data, RobustnessConfig(checkpoints=(0, 10)),
                              init_fn=lambda seed: _fresh_resnet(seed, data))
    assert result.layers[0] == "conv1" and "layer3.0.downsample.0" in result.layers
    assert result.layers[-1] == "fc"
    assert all(0.0 <= e <= 1.0 for row in result.reinit for e in row)
    heatmap(result, tmp_path / "resnet.png")


def _fresh_resnet(seed, data):
    torch.manual_seed(seed)
    return build_model("resnet_small", feature_shape=data.feature_shape, width=8)


def test_robustness_errors():
    data = load_dataset("digits")
    model = build_model("mlp", feature_shape=(64,))
    with pytest.raises(CompressorError, match=r"no checkpoint for step\(s\) \[5\]"):
        layer_robustness(model, {0: model.state_dict()}, data, RobustnessConfig(checkpoints=(5,)))
    with pytest.raises(CompressorError, match="model has no layer 'fc9'"):
        layer_robustness(model, {0: model.state_dict()}, data, RobustnessConfig(checkpoints=(0,)),
                         layers=["fc9"])
    with pytest.raises(CompressorError, match="RobustnessConfig.trials must be >= 1"):
        RobustnessConfig(trials=0)


def test_bit_budgets_give_each_layer_its_width_in_inq():
    from compressor.formats.pow2_levels import pow2_levels
    from compressor.quantization import INQConfig, quantize_

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("mlp", feature_shape=data.feature_shape, num_classes=10)
    result = RobustnessResult(layers=["1", "3", "5", "7"], steps=[0], base_error=0.1,
                              reinit=[[0.9], [0.1], [0.5], [0.1]], rerandom=[0.9, 0.1, 0.5, 0.1])
    bits = budgets(result, "bits")
    assert bits == {"1": 5, "3": 3, "5": 4, "7": 3}  # the critical layer keeps the most bits
    cfg = INQConfig(bits=5, portions=(0.5, 1.0), steps_per_stage=2, layer_bits=bits)
    quantize_(model, cfg, data)
    for layer, width in bits.items():
        packed = model.get_submodule(layer)
        assert packed.bits == width
        levels = set(pow2_levels(packed.n1, width).tolist()) | {0.0}
        assert set(packed.weight.detach().double().abs().unique().tolist()) <= levels
        assert len(levels) == 2 ** (width - 2) + 1  # zero and 2^(b-2) magnitudes (the paper)


def test_budget_errors():
    from compressor.lottery import LotteryConfig, rates_for_rounds
    from compressor.quantization import INQConfig, quantize_

    with pytest.raises(CompressorError, match=r"INQConfig.layer_bits\['1'\]"):
        INQConfig(layer_bits={"1": 9})
    model = build_model("mlp", feature_shape=(64,))
    with pytest.raises(CompressorError, match="pattern 'fc.*' matches no quantized layer"):
        quantize_(model, INQConfig(layer_bits={"fc.*": 4}), load_dataset("digits"))
    with pytest.raises(CompressorError, match="layer_rates needs strategy 'layerwise'"):
        LotteryConfig(strategy="global", output_rate=None, layer_rates={"1.*": 0.3})
    assert rates_for_rounds({"a": 0.75}, 2) == {"a": pytest.approx(0.5)}
    with pytest.raises(CompressorError, match="rounds must be >= 1"):
        rates_for_rounds({"a": 0.75}, 0)
