"""Direct sparse convolution / linear: packing, performance model, model conversion."""
