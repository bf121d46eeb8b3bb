"""The model registry: factory name -> factory. A model file stores the name and the keyword
arguments (JSON values), so `build_model(name, **kwargs)` rebuilds the same architecture."""

import inspect

from torch import nn

from compressor.errors import CompressorError
from compressor.models.mobilenet import mobilenet_v2
from compressor.models.nets import conv2, conv4, conv6, digits_cnn, lenet, mlp
from compressor.models.recurrent import lstm_lm, onlstm_lm
from compressor.models.resnet import resnet18, resnet50, resnet_small
from compressor.models.text import bert, gpt
from compressor.models.vgg import vgg16, vgg16_bn
from compressor.models.vit import vit

MODELS = {
    "lenet": lenet, "mlp": mlp, "conv2": conv2, "conv4": conv4, "conv6": conv6,
    "digits_cnn": digits_cnn,
    "resnet_small": resnet_small, "resnet18": resnet18, "resnet50": resnet50,
    "vgg16": vgg16, "vgg16_bn": vgg16_bn, "mobilenet_v2": mobilenet_v2,
    "vit": vit, "bert": bert, "gpt": gpt, "lstm_lm": lstm_lm, "onlstm_lm": onlstm_lm,
}


def build_model(name: str, /, **kwargs) -> nn.Module:
    """MODELS[name](**kwargs); unknown names and arguments are one-line CompressorErrors."""
    factory = MODELS.get(name)
    if factory is None:
        raise CompressorError(f"unknown model {name!r}: use one of {sorted(MODELS)}")
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise CompressorError(f"model {name!r} takes no argument {unknown[0]!r}; it takes "
                              f"{sorted(accepted)}")
    return factory(**kwargs)
