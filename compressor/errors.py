"""User-facing errors. The CLI turns these into one line and exit code 2."""


class CompressorError(ValueError):
    """A mistake the user can fix (bad argument, bad file, incompatible run); message says how."""
