"""Structured pruning: remove whole channels, heads and hidden units so the model physically
shrinks (Li et al. L1 filters; Molchanov et al. first-order Taylor, iterative).

`prune_channels_(model, StructuredConfig(...), example_inputs, filter_fn=None, data=None)`
traces the model with torch.fx, finds the channels that must be removed together (residual
adds, concatenation, split/chunk, flatten -> Linear, grouped/depthwise convs, norms, attention
heads, LSTM/ON-LSTM hidden units), ranks them and rebuilds every touched layer smaller. Layers
the analysis cannot handle are reported and left as they are.
"""

from compressor.structured.api import (
                                       StructuredConfig,
                                       convert_attention_,
                                       macs,
                                       prune_channels_,
                                       structured_result,
)
from compressor.structured.attention import PrunableMultiheadAttention
from compressor.structured.criteria import CRITERIA

__all__ = ["CRITERIA", "PrunableMultiheadAttention", "StructuredConfig", "convert_attention_",
           "macs", "prune_channels_", "structured_result"]
