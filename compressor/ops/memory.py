"""The memory of the CPU kernels' outputs (sparse conv, fused bottleneck, sparse linear,
max-pool): a freed output's block of 64 KiB or more is kept, up to 256 MiB idle in all, for the
next output of the same size, because a whole converted network allocates the same sizes on
every forward and fresh blocks come from the system as pages the kernels then fault in
(csrc/include/compressor/kept_outputs.h). `release_kept_outputs()` gives the idle blocks back."""

from compressor import _extension


def release_kept_outputs() -> int:
    """Return the CPU kernels' idle output memory to the system; the bytes released (0 without
    the extension)."""
    if not _extension.load():
        return 0
    from compressor import _C

    return _C.release_kept_outputs()
