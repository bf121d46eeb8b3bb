"""compressor.models: every factory builds and runs on its feature_shape; the torchvision-style
models have torchvision's state_dict names, shapes and parameter counts (written out by hand from
torchvision's documented layout, since its wheel does not load here); the `shapes` dataset."""

import inspect
import json

import pytest
import torch
from torch import nn

from compressor.data import load_dataset
from compressor.errors import CompressorError
from compressor.models import MODELS, build_model

TOKEN_MODELS = {"bert", "gpt", "lstm_lm", "onlstm_lm"}
SMALL = {  # keep the big ones small so the whole file runs in seconds
    "resnet18": dict(width=8, feature_shape=(3, 32, 32), num_classes=7),
    "resnet50": dict(width=8, feature_shape=(3, 32, 32), num_classes=7),
    "vgg16": dict(width=8, hidden=32, pool=1, feature_shape=(3, 32, 32), num_classes=7),
    "vgg16_bn": dict(width=8, hidden=32, pool=2, feature_shape=(3, 32, 32), num_classes=7),
    "mobilenet_v2": dict(width_mult=0.25, feature_shape=(3, 32, 32), num_classes=7),
    "conv4": dict(feature_shape=(2, 40)),
    "lenet": dict(feature_shape=(64,)),
}


def _default(name: str, arg: str):
    return inspect.signature(MODELS[name]).parameters[arg].default


@pytest.mark.parametrize("name", sorted(MODELS))
def test_factory_builds_and_runs(name):
    kwargs = SMALL.get(name, {})
    factory = MODELS[name]
    params = inspect.signature(factory).parameters
    assert all(p.kind is p.KEYWORD_ONLY for p in params.values()), "keyword-only factories"
    assert "num_classes" in params and "feature_shape" in params
    json.dumps({k: p.default for k, p in params.items()})  # a model file stores these
    shape = tuple(kwargs.get("feature_shape", _default(name, "feature_shape")))
    classes = kwargs.get("num_classes", _default(name, "num_classes"))
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    x = (torch.randint(0, classes if name != "bert" else 50, (2, *shape)) if name in TOKEN_MODELS
         else torch.rand(2, *shape))
    with torch.no_grad():
        out = model(x)
    expected = (2, shape[0], classes) if name in TOKEN_MODELS - {"bert"} else (2, classes)
    assert tuple(out.shape) == expected and torch.isfinite(out).all()


def test_json_kwargs_rebuild_the_same_architecture():
    kwargs = json.loads(json.dumps(SMALL["resnet18"]))  # tuples come back as lists
    a, b = build_model("resnet18", **kwargs), build_model("resnet18", **SMALL["resnet18"])
    b.load_state_dict(a.state_dict(), strict=True)


def test_build_model_errors():
    with pytest.raises(CompressorError, match=r"unknown model 'resnet19'.*resnet18"):
        build_model("resnet19")
    with pytest.raises(CompressorError, match=r"'resnet18' takes no argument 'depth'"):
        build_model("resnet18", depth=3)
    with pytest.raises(CompressorError, match=r"feature_shape must be \(C, H, W\)"):
        build_model("resnet_small", feature_shape=(40,))
    with pytest.raises(CompressorError, match=r"dim \(30\) must be a multiple of heads \(4\)"):
        build_model("gpt", dim=30)
    with pytest.raises(TypeError):
        MODELS["lenet"]((40,), 10)  # keyword arguments only


def _shapes(name: str, **kwargs) -> dict[str, tuple]:
    with torch.device("meta"):  # full torchvision sizes without allocating them
        model = build_model(name, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _bn(prefix: str, n: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
            f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()}


def _params(shapes: dict) -> int:
    return sum(torch.Size(s).numel() for k, s in shapes.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def test_resnet18_matches_torchvision_layout():
    got = _shapes("resnet18")
    first = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64),
             "layer1.0.conv1.weight": (64, 64, 3, 3), **_bn("layer1.0.bn1", 64),
             "layer1.0.conv2.weight": (64, 64, 3, 3), **_bn("layer1.0.bn2", 64)}
    assert list(got)[:len(first)] == list(first) and all(got[k] == v for k, v in first.items())
    assert got["layer2.0.conv1.weight"] == (128, 64, 3, 3)
    assert got["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert "layer2.0.downsample.1.running_var" in got and "layer1.0.downsample.0.weight" not in got
    assert got["layer4.1.conv2.weight"] == (512, 512, 3, 3) and got["fc.weight"] == (1000, 512)
    assert len(got) == 122 and _params(got) == 11_689_512  # torchvision's documented count


def test_resnet50_matches_torchvision_layout():
    got = _shapes("resnet50")
    assert [k for k in got if k.startswith("layer1.0.")][:3] == [
        "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias"]
    assert got["layer1.0.conv1.weight"] == (64, 64, 1, 1)
    assert got["layer1.0.conv2.weight"] == (64, 64, 3, 3)
    assert got["layer1.0.conv3.weight"] == (256, 64, 1, 1)
    assert got["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert got["layer2.0.conv2.weight"] == (128, 128, 3, 3)  # v1.5: stride on the 3x3
    assert got["layer4.2.bn3.weight"] == (2048,) and got["fc.weight"] == (1000, 2048)
    assert len(got) == 320 and _params(got) == 25_557_032


@pytest.mark.parametrize("name, convs, count", [
    ("vgg16", [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28], 138_357_544),
    ("vgg16_bn", [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40], 138_365_992),
])
def test_vgg_matches_torchvision_layout(name, convs, count):
    got = _shapes(name)
    conv_keys = sorted({int(k.split(".")[1]) for k in got
                        if k.startswith("features.") and len(got[k]) == 4})
    assert conv_keys == convs
    assert got[f"features.{convs[-1]}.weight"] == (512, 512, 3, 3)
    if name == "vgg16_bn":
        assert got["features.1.running_mean"] == (64,)
    assert got["classifier.0.weight"] == (4096, 25088)
    assert got["classifier.6.weight"] == (1000, 4096)
    assert _params(got) == count


def test_mobilenet_v2_matches_torchvision_layout():
    got = _shapes("mobilenet_v2")
    expected = {
        "features.0.0.weight": (32, 3, 3, 3), "features.0.1.weight": (32,),
        "features.1.conv.0.0.weight": (32, 1, 3, 3), "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.1.conv.2.weight": (16,), "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3), "features.2.conv.2.weight": (24, 96, 1, 1),
        "features.2.conv.3.running_var": (24,), "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1), "classifier.1.weight": (1000, 1280),
    }
    assert {k: got[k] for k in expected} == expected
    assert len(got) == 314 and _params(got) == 3_504_872


def test_vit_matches_torchvision_layout():
    got = _shapes("vit", feature_shape=(3, 224, 224), num_classes=1000, patch_size=16, dim=768,
                  depth=12, heads=12, mlp_dim=3072)  # torchvision's vit_b_16
    block = "encoder.layers.encoder_layer_11."
    assert got["conv_proj.weight"] == (768, 3, 16, 16) and got["class_token"] == (1, 1, 768)
    assert got["encoder.pos_embedding"] == (1, 197, 768)
    assert got[block + "self_attention.in_proj_weight"] == (2304, 768)
    assert got[block + "self_attention.out_proj.weight"] == (768, 768)
    assert got[block + "mlp.0.weight"] == (3072, 768) and got[block + "mlp.3.weight"] == (768, 3072)
    assert got[block + "ln_2.bias"] == (768,) and got["encoder.ln.weight"] == (768,)
    assert got["heads.head.weight"] == (1000, 768)
    assert _params(got) == 86_567_656


def test_bert_layers_are_transformer_encoder_layers():
    """Our encoder layer loads nn.TransformerEncoderLayer's weights and computes the same thing."""
    torch.manual_seed(0)
    model = build_model("bert", dim=32, heads=4, mlp_dim=64, depth=1).eval()
    ref = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu",
                                     batch_first=True).eval()
    model.layers[0].load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(model.layers[0](x), ref(x))


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = build_model("gpt", feature_shape=(8,), num_classes=50).eval()
    tokens = torch.randint(0, 50, (1, 8))
    changed = tokens.clone()
    changed[0, 5] = (tokens[0, 5] + 1) % 50
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_shapes_dataset_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path))
    d = load_dataset("shapes", num_samples=200, size=16, seed=3)
    assert d.x_train.shape == (150, 3, 16, 16) and d.x_test.shape == (50, 3, 16, 16)
    assert d.num_classes == 10 and 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert len(list(tmp_path.glob("shapes-*.npz"))) == 1
    again = load_dataset("shapes", num_samples=200, size=16, seed=3)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
    other = load_dataset("shapes", num_samples=200, size=16, seed=4)
    assert not torch.equal(other.x_train, d.x_train)
    with pytest.raises(CompressorError, match="shapes: need num_samples >= 20"):
        load_dataset("shapes", num_samples=5)
