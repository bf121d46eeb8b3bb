"""Argument checks shared by the model factories: one-line errors naming the argument."""

from compressor.errors import CompressorError


def image_shape(name: str, feature_shape) -> tuple[int, int, int]:
    """(C, H, W) from a feature_shape given as a tuple or a JSON list."""
    shape = tuple(int(s) for s in feature_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise CompressorError(f"{name}: feature_shape must be (C, H, W) with positive sizes, "
                              f"got {tuple(feature_shape)}")
    return shape


def token_shape(name: str, feature_shape) -> int:
    """The sequence length T from a feature_shape (T,)."""
    shape = tuple(int(s) for s in feature_shape)
    if len(shape) != 1 or shape[0] <= 0:
        raise CompressorError(f"{name}: feature_shape must be (T,) token ids, got "
                              f"{tuple(feature_shape)}")
    return shape[0]


def positive(name: str, **values) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CompressorError(f"{name}: {key} must be a positive integer, got {value!r}")


def divides(name: str, big: str, big_value: int, small: str, small_value: int) -> None:
    if big_value % small_value:
        raise CompressorError(f"{name}: {big} ({big_value}) must be a multiple of {small} "
                              f"({small_value})")
