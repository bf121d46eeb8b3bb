"""Reference architectures as factories taking keyword arguments only (num_classes,
feature_shape and each model's own options): torchvision-compatible ResNet/VGG/MobileNetV2/ViT,
transformer text models, recurrent LMs, and the small nets sized for the built-in datasets."""

from compressor.models.mobilenet import InvertedResidual, MobileNetV2, mobilenet_v2
from compressor.models.nets import (
    ConvNet1d,
    DigitsCNN,
    conv2,
    conv4,
    conv6,
    digits_cnn,
    lenet,
    lenet_300_100,
    mlp,
)
from compressor.models.recurrent import LanguageModel, LSTMLanguageModel, lstm_lm, onlstm_lm
from compressor.models.registry import MODELS, build_model
from compressor.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet50,
    resnet_small,
)
from compressor.models.text import BertEncoder, CausalSelfAttention, GPTDecoder, bert, gpt
from compressor.models.vgg import VGG, vgg16, vgg16_bn
from compressor.models.vit import VisionTransformer, vit

__all__ = [
    "MODELS", "BasicBlock", "BertEncoder", "Bottleneck", "CausalSelfAttention", "ConvNet1d",
    "DigitsCNN", "GPTDecoder", "InvertedResidual", "LSTMLanguageModel", "LanguageModel",
    "MobileNetV2", "ResNet", "VGG", "VisionTransformer", "bert", "build_model", "conv2", "conv4",
    "conv6", "digits_cnn", "gpt", "lenet", "lenet_300_100", "lstm_lm", "mlp", "mobilenet_v2",
    "onlstm_lm", "resnet18", "resnet50", "resnet_small", "vgg16", "vgg16_bn", "vit",
]
